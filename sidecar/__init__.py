"""The PicoAPI sidecar: registers one service, described by a YAML file, with the master."""
