"""What both demos (demo.py, cluster_demo.py) print and look up alike: paths as typed, exit
codes as words, JSON log lines as text, and who holds a port. Imported from the demo's
own directory (a script's directory is first on its path)."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import psutil


class Stop(Exception):
    """Ctrl-C or SIGTERM arrived."""


def show(path: Path) -> str:
    """A path as the user would type it: relative to where they are, when it is inside."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def say(text: str = "") -> None:
    print(text, flush=True)


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def readable(line: str) -> str:
    """A JSON log line as `level event key=value ...`; other lines as they are."""
    try:
        event = json.loads(line)
    except ValueError:
        return line
    if not isinstance(event, dict) or "event" not in event:
        return line
    rest = " ".join(
        f"{key}={value}"
        for key, value in event.items()
        if key not in ("event", "level", "timestamp")
    )
    return f"{event.get('level', '')} {event['event']} {rest}".strip()


def tail(path: Path, lines: int, width: int | None = None) -> list[str]:
    """The last `lines` of a log, readable, each cut at `width` characters if given."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [readable(line)[:width] for line in text.splitlines()[-lines:]]


def port_is_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a connection left in TIME_WAIT is no obstacle.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def holder(port: int) -> str:
    """Who listens on `port`, when the system tells us (best effort: it may need root)."""
    try:
        for conn in psutil.net_connections("tcp"):
            address = conn.laddr  # an empty tuple for a socket with no address
            listening = conn.status == psutil.CONN_LISTEN and isinstance(address, tuple)
            if listening and address and address[1] == port and conn.pid:
                command = " ".join(" ".join(psutil.Process(conn.pid).cmdline()).split())
                return f"pid {conn.pid}: {command[:60]}" + ("…" if len(command) > 60 else "")
    except (psutil.Error, OSError):
        pass
    return ""
