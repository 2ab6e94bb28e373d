"""`wrk` as the load generator: run it, read what it prints, and what the server spent.

    wrk -t1 -c64 -d<secs> --latency [-s bench/lua/SCRIPT.lua] URL [-- ARGS]

One wrk thread with 64 keep-alive connections, on its own core of this 2-core machine
while the server under test has the other. `run()` reads the server's CPU time (utime +
stime of /proc/PID/stat, all its threads) just before and just after wrk, so its CPU per
request is that delta over the requests wrk completed: a figure no client's speed flatters.
wrk's own CPU (the orchestrator's RUSAGE_CHILDREN delta: wrk is the only child reaped in
the window) says whether the client was the limit.

A run is clean only with requests answered, no response of status 400 or more (wrk's
"Non-2xx or 3xx responses", which counts exactly those) and no socket error (connect,
read, write, timeout). Anything else lands in `problems`, and every row built on the run
shows it: a server that answers 4xx or 5xx quickly is an error, never speed. `rps` counts
only the answers under 400. (wrk counts a 3xx as an answer; the cases that write check the
registry's count afterwards, the ones that read check an answer before the run.)
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.common import BENCH, Proc, mid

LUA: Final = BENCH / "lua"
PUT_SERVICES: Final = LUA / "put_services.lua"
PICOAPI_REGISTER: Final = LUA / "picoapi_register.lua"
GET_TAGS: Final = LUA / "get_tags.lua"
THREADS: Final = 1
CONNECTIONS: Final = 64
GRACE_S: Final = 30.0  # past -d, wrk is stopped by its pid
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME: Final = r"([\d.]+)(us|ms|s|m|h)"
_SUMMARY_RE: Final = re.compile(rf"(\d+) requests in {_TIME}, ([\d.]+)(B|KB|MB|GB|TB) read")
_PERCENTILE_RE: Final = re.compile(rf"^\s+(50|75|90|99)(?:\.0+)?%\s+{_TIME}\s*$", re.MULTILINE)
_LATENCY_RE: Final = re.compile(rf"^\s+Latency\s+{_TIME}\s+{_TIME}\s+{_TIME}", re.MULTILINE)
_SOCKET_RE: Final = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX_RE: Final = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_RATE_RE: Final = re.compile(r"Requests/sec:\s+([\d.]+)")
_BYTES: Final = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError(
            "wrk is not installed (the main load generator): `make bench` installs it"
        )
    return found


def run_prefix() -> str:
    """A fresh id prefix for one run: ids never repeat across runs against one store."""
    return f"w{secrets.token_hex(4)}"


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        text = stat.read()
    fields = text[text.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(text: str) -> dict[str, Any]:
    """What `wrk --latency` printed: counts, errors, rate, latencies (ms). Raises if the
    summary is missing (wrk failed before measuring anything)."""
    summary = _SUMMARY_RE.search(text)
    rate = _RATE_RE.search(text)
    if summary is None or rate is None:
        raise RuntimeError(f"wrk printed no summary: {text[-800:]}")
    requests = int(summary.group(1))
    duration_s = _ms(summary.group(2), summary.group(3)) / 1000
    socket = _SOCKET_RE.search(text)
    socket_errors = dict(
        zip(
            ("connect", "read", "write", "timeout"),
            (int(x) for x in socket.groups()) if socket else (0, 0, 0, 0),
            strict=True,
        )
    )
    non_2xx = _NON_2XX_RE.search(text)
    failed = int(non_2xx.group(1)) if non_2xx else 0
    latency = _LATENCY_RE.search(text)
    percentiles = {
        f"p{match.group(1)}_ms": _ms(match.group(2), match.group(3))
        for match in _PERCENTILE_RE.finditer(text)
    }
    answered = max(requests - failed, 0)
    return {
        "requests": requests,
        "non_2xx": failed,
        "answered": answered,
        "socket_errors": socket_errors,
        "duration_s": duration_s,
        "rps": answered / duration_s if duration_s else 0.0,
        "wrk_rps": float(rate.group(1)),
        "read_bytes": float(summary.group(4)) * _BYTES[summary.group(5)],
        "latency_avg_ms": _ms(latency.group(1), latency.group(2)) if latency else None,
        "latency_max_ms": _ms(latency.group(5), latency.group(6)) if latency else None,
        **percentiles,
    }


def problems(result: dict[str, Any]) -> list[str]:
    """Why a run is not a clean measurement (empty if it is)."""
    found = []
    if result["requests"] == 0:
        found.append("no request answered")
    if result["non_2xx"]:
        found.append(f"{result['non_2xx']:,} answers >= 400")
    errors = {k: v for k, v in result["socket_errors"].items() if v}
    if errors:
        found.append("socket errors " + ", ".join(f"{k} {v:,}" for k, v in errors.items()))
    return found


async def run(
    url: str,
    *,
    seconds: float,
    server: Proc | None = None,
    script: Path | None = None,
    args: Sequence[str] = (),
    headers: Sequence[str] = (),
    timeout_s: float | None = None,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """One `wrk -t1 -c64 -d<seconds> --latency` run; with `server`, its CPU over the run."""
    argv = [binary(), f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency"]
    if timeout_s is not None:
        argv.append(f"--timeout={timeout_s:g}s")
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if args:
        argv += ["--", *args]
    cpu_before = proc_cpu_seconds(server.pid) if server is not None else 0.0
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(), seconds + GRACE_S)
    finally:
        if child.returncode is None:  # timed out or cancelled: stop it by its pid
            child.kill()
            await child.wait()
    cpu_after = proc_cpu_seconds(server.pid) if server is not None else 0.0
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.decode(errors="replace")
    if log_path is not None:
        with open(log_path, "a") as log_file:
            log_file.write(f"$ {' '.join(argv)}\n{text}\n")
    if child.returncode != 0:
        raise RuntimeError(f"wrk exited {child.returncode}: {text[-800:]}")
    result = parse(text)
    result["argv"] = argv[1:]
    client = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    result["client_cpu_pct"] = 100 * client / result["duration_s"] if result["duration_s"] else 0.0
    if server is not None:
        used = cpu_after - cpu_before
        result["server_cpu_s"] = used
        result["server_cpu_pct"] = (
            100 * used / result["duration_s"] if result["duration_s"] else 0.0
        )
        result["server_cpu_us"] = 1e6 * used / max(result["requests"], 1)
    result["problems"] = problems(result)
    return result


def failed(exc: BaseException) -> dict[str, Any]:
    """A run that could not be measured at all (the server did not start, wrk failed)."""
    return {
        "requests": 0,
        "non_2xx": 0,
        "answered": 0,
        "socket_errors": {},
        "rps": None,
        "client_cpu_pct": None,
        "server_cpu_pct": None,
        "server_cpu_us": None,
        "problems": [f"not measured: {type(exc).__name__}: {exc}"[:300]],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs of one target; every run's problems, by run."""
    return {
        "rps": mid(runs, "rps"),
        "rps_runs": [None if r["rps"] is None else round(r["rps"], 1) for r in runs],
        "p50_ms": mid(runs, "p50_ms"),
        "p90_ms": mid(runs, "p90_ms"),
        "p99_ms": mid(runs, "p99_ms"),
        "client_cpu_pct": mid(runs, "client_cpu_pct"),
        "server_cpu_pct": mid(runs, "server_cpu_pct"),
        "server_cpu_us": mid(runs, "server_cpu_us"),
        "requests": [r["requests"] for r in runs],
        "non_2xx": [r["non_2xx"] for r in runs],
        "socket_errors": [r["socket_errors"] for r in runs],
        "problems": [
            f"run {i + 1}: {problem}" for i, r in enumerate(runs) for problem in r["problems"]
        ],
    }
