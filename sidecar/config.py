"""The sidecar's YAML description, parsed once into frozen, typed objects."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """GET `url` (a path in the YAML is resolved against the service on 127.0.0.1)."""

    url: str


@dataclass(frozen=True, slots=True)
class TcpCheck:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ProcessCheck:
    """Exactly one of the three is set."""

    pidfile: str | None = None
    name: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True, slots=True)
class ExecCheck:
    argv: tuple[str, ...]


Probe = HttpCheck | TcpCheck | ProcessCheck | ExecCheck


@dataclass(frozen=True, slots=True)
class CheckConfig:
    probe: Probe
    interval: float = 10.0
    timeout: float = 2.0
    failures_before_critical: int = 1
    successes_before_passing: int = 1
    deregister_after: float = 600.0
