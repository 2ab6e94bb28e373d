"""`picoapi-sidecar run FILE` and `picoapi-sidecar check FILE`.

Both load the file with the same `load_config`, so what `check` accepts is what `run`
starts with. Bad configuration exits 2 with one `file:line: field: message` per problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Final

from master.shared.daemon import package_version
from master.shared.yamlfile import ConfigError
from sidecar.config import Config, load_config, registration_json

EXIT_CONFIG: Final = 2

_DESCRIPTION: Final = """\
Register one service with a PicoAPI master, described by a YAML file, with no change to
the service's code. The sidecar serves /health (running the configured check), keeps the
registration in sync and deregisters on exit.
"""

_FILE_HELP: Final = """\
the service file (YAML):
  service:   name (required), port (required), id, address, scheme, tags, meta, openapi
  check:     one of http | tcp | process | exec; interval, timeout,
             failures_before_critical, successes_before_passing, deregister_after
             (leave it out for a tcp connect to service.port)
  master:    url (one or a list), token or token_file; for an https:// master
             ca_file, cert_file and key_file
  sidecar:   listen, advertise, resync, deregister_on_exit, token_file (for POST /drain)
Strings expand ${VAR} and ${VAR:-default} from the environment; $$ is a literal $.
Durations: 500ms, 10s, 2m, 1h. Unknown keys are errors.

environment: POD_IP (default service.address), PICOAPI_MASTER_URL (default master.url,
several separated by commas)

exit status: 0 ok, 2 bad configuration (each problem as file:line: field: message)
"""


def build_parser() -> argparse.ArgumentParser:
    log_format = argparse.ArgumentParser(add_help=False)
    log_format.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=argparse.SUPPRESS,  # so a value given before the subcommand survives
        help="log as JSON lines or for a human (default: console on a TTY, else json)",
    )
    parser = argparse.ArgumentParser(
        prog="picoapi-sidecar",
        description=_DESCRIPTION,
        epilog=_FILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[log_format],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        parents=[log_format],
        help="run the sidecar for the service FILE describes",
        description="Load FILE, serve the sidecar's HTTP on sidecar.listen and keep the\n"
        "service registered with the master until SIGTERM/SIGINT (then deregister and\n"
        "exit 0). FILE is reloaded when it changes and on SIGHUP.",
        epilog=_FILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", metavar="FILE", help="the service's YAML file")
    check = commands.add_parser(
        "check",
        help="validate FILE and print the registration it would send",
        description="Validate FILE and print, as JSON, the registration `run` would send\n"
        "to the master (without the OpenAPI document, which is fetched from the service).",
        epilog=_FILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="the service's YAML file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.command == "check":
        print(json.dumps(registration_json(config, None), indent=2, ensure_ascii=False))
        return 0
    return _run(args.file, config, getattr(args, "log_format", None))


def _run(path: str, config: Config, log_format: str | None) -> int:
    # Imported here so `check` never loads aiohttp and the rest of the daemon.
    from sidecar.app import run

    return run(path, config, log_format)


if __name__ == "__main__":
    sys.exit(main())
