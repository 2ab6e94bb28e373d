"""What both daemons share and nothing of the registry: the YAML layer, the HTTP probe,
token files, capped reads and daemon plumbing.

The sidecar imports `master.model` and this package, nothing else of the master; this
package imports nothing of the registry, the API, health checking or the stores.
`make lint` holds both fences (import-linter contracts in pyproject.toml).
"""
