"""What every case shares: processes stopped by pid, percentiles, Prometheus text, the clock.

Every process a case starts goes through `Procs`, a context manager that stops them all
(SIGTERM, then SIGKILL) by pid when the case ends, however it ends.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import psutil

ROOT: Final = Path(__file__).resolve().parent.parent
BENCH: Final = ROOT / "bench"
RESULTS: Final = BENCH / "results"
BIN: Final = Path(sys.executable).parent
PICOAPI_PYTHON: Final = BENCH / ".venv-picoapi" / "bin" / "python"
SERVER_JS: Final = ROOT / "tests" / "service" / "server.js"
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
LISTENING_RE: Final = re.compile(rb"^LISTENING (\d+)", re.MULTILINE)


# --- processes -------------------------------------------------------------------------


class Proc:
    """A child process with its output in a log file; stopped by its pid."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            cwd=str(ROOT),
        )
        self.pid = self.proc.pid
        self.ps = psutil.Process(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> bytes:
        return self.log_path.read_bytes()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            if line.startswith(b"{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    found.append(event)
        return found

    async def wait_event(self, name: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == name:
                    return event
            self._check_alive(name)
            await asyncio.sleep(0.02)
        raise RuntimeError(f"{self.name}: no {name!r} within {timeout:g}s: {self.tail()}")

    async def wait_listening(self, timeout: float = START_TIMEOUT) -> int:
        """The port from a `LISTENING <port>` line (the helpers and server.js print one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING_RE.search(self.output())
            if match:
                return int(match.group(1))
            self._check_alive("LISTENING")
            await asyncio.sleep(0.02)
        raise RuntimeError(f"{self.name}: not listening within {timeout:g}s: {self.tail()}")

    def _check_alive(self, waiting_for: str) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited ({self.proc.returncode}) before {waiting_for}: {self.tail()}"
            )

    def tail(self, size: int = 2000) -> str:
        return self.output()[-size:].decode(errors="replace")

    def interrupt(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGINT, as Ctrl-C, and wait for the process to finish."""
        if self.alive():
            os.kill(self.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def uss(self) -> int:
        return int(self.ps.memory_full_info().uss)

    def has_loaded(self, library: str) -> bool:
        """Whether a shared object whose path holds `library` is mapped (/proc/PID/maps):
        "uvloop" says the process runs uvloop's event loop, "httptools" its HTTP parser."""
        with open(f"/proc/{self.pid}/maps") as maps:
            return any(library in line and ".so" in line for line in maps)

    def event_loop(self) -> str:
        return "uvloop" if self.has_loaded("uvloop") else "asyncio"


class Procs:
    """Starts processes for one case and stops every one of them, by pid, at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[Proc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for proc in reversed(self._started):
            try:
                proc.stop()
            except Exception as error:  # one stubborn child must not leave the others running
                print(f"  could not stop {proc.name} ({proc.pid}): {error}", file=sys.stderr)
        self._started.clear()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(self._unique(name), argv, self.log_dir, env or {})
        self._started.append(proc)
        return proc

    def _unique(self, name: str) -> str:
        taken = {p.name for p in self._started}
        n, candidate = 1, name
        while candidate in taken or (self.log_dir / f"{candidate}.log").exists():
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    async def master(
        self,
        store: str = "memory://",
        listen: str = "127.0.0.1:0",
        name: str = "master",
        extra: Sequence[str] = (),
        timeout: float = START_TIMEOUT,
    ) -> tuple[Proc, str]:
        """A master, once it has started (within `timeout`: it loads its store first);
        `extra` flags go after the store (say `--member-ttl 3s`)."""
        argv = [str(BIN / "picoapi-master"), "--listen", listen, "--log-format", "json"]
        proc = self.start(name, [*argv, "--store", store, *extra])
        event = await proc.wait_event("master_started", timeout)
        return proc, f"http://{event['listen']}"

    async def sidecar(self, config_path: Path, name: str = "sidecar") -> Proc:
        argv = [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(config_path)]
        proc = self.start(name, argv)
        await proc.wait_event("sidecar_started")
        return proc

    async def helper(self, module: str, *args: str, name: str | None = None) -> tuple[Proc, int]:
        """One of bench's own servers (`python -m bench.MODULE`), once it listens."""
        proc = self.start(name or module, [sys.executable, "-m", f"bench.{module}", *args])
        return proc, await proc.wait_listening()

    async def node_service(self, port: int = 0, name: str = "node-service") -> tuple[Proc, int]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node (Node.js) is not installed: `make bench` installs it")
        proc = self.start(name, [node, str(SERVER_JS), str(port), "picoapi-bench"])
        return proc, await proc.wait_listening()

    async def picoapi_master(self, name: str = "picoapi-master") -> tuple[Proc, str]:
        argv = [str(PICOAPI_PYTHON), "-m", "bench.picoapi_master"]
        proc = self.start(name, argv)
        return proc, f"http://127.0.0.1:{await proc.wait_listening()}"


# --- load generator --------------------------------------------------------------------


async def loadgen(
    spec: dict[str, Any], server: Proc | None = None, timeout: float = 600.0
) -> dict[str, Any]:
    """Run bench/loadgen.py in its own process (its own core) and return what it measured.

    With `server`, also its CPU over the run: `server_cpu_pct` (of one core) and
    `server_cpu_us` per answered request, which does not depend on how fast the client is.
    """
    cpu_before = server.cpu_seconds() if server is not None else 0.0
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), timeout)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"loadgen failed ({child.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    if server is not None:
        # The server idles while the client starts and builds its requests: all its CPU
        # since `cpu_before` was spent within the client's timed window.
        used = server.cpu_seconds() - cpu_before
        result["server_cpu_pct"] = 100 * used / result["elapsed_s"]
        result["server_cpu_us"] = 1e6 * used / max(result["done"], 1)
    return result


def loadgen_problems(result: dict[str, Any]) -> list[str]:
    """A Python-client run's answers that were not 2xx, and its client errors."""
    found = []
    bad = {s: c for s, c in result["statuses"].items() if not 200 <= int(s) < 300}
    if bad:
        found.append("answers " + ", ".join(f"{s}: {c:,}" for s, c in bad.items()))
    if result["errors"]:
        found.append("errors " + ", ".join(f"{k}: {v:,}" for k, v in result["errors"].items()))
    if not result["ok"]:
        found.append("no request answered")
    return found


async def checked_loadgen(spec: dict[str, Any], server: Proc | None = None) -> dict[str, Any]:
    """`loadgen`, its problems listed; a run that fails outright is a run with a problem."""
    try:
        result = await loadgen(spec, server)
    except Exception as exc:
        return {
            "rps": None,
            "ok": 0,
            "truncated": False,
            "problems": [f"not measured: {type(exc).__name__}: {exc}"[:300]],
            "concurrency": spec.get("concurrency"),
        }
    result["problems"] = loadgen_problems(result)
    return result


def mid(results: Iterable[dict[str, Any]], key: str) -> float | None:
    """The median of `key` over the runs that have it; None if none has."""
    values = [r[key] for r in results if r.get(key) is not None]
    return median(values) if values else None


def summarize_loadgen(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeated Python-client runs of one target; every run's problems."""
    return {
        "rps": mid(results, "rps"),
        "rps_runs": [None if r["rps"] is None else round(r["rps"], 1) for r in results],
        "p50_ms": mid(results, "p50_ms"),
        "p99_ms": mid(results, "p99_ms"),
        "ok": [r["ok"] for r in results],
        "concurrency": results[0].get("concurrency"),
        "client_cpu_pct": mid(results, "client_cpu_pct"),
        "server_cpu_pct": mid(results, "server_cpu_pct"),
        "server_cpu_us": mid(results, "server_cpu_us"),
        "truncated": any(r["truncated"] for r in results),
        "problems": [f"run {i + 1}: {p}" for i, r in enumerate(results) for p in r["problems"]],
    }


def describe(result: dict[str, Any]) -> str:
    """One log line's worth of a run (wrk's or the Python client's)."""

    def num(key: str, digits: int = 0) -> str:
        value = result.get(key)
        return "-" if value is None else f"{value:,.{digits}f}"

    line = (
        f"{num('rps'):>8}/s p50 {num('p50_ms', 2)} ms p99 {num('p99_ms', 2)} ms (client CPU "
        f"{num('client_cpu_pct')} %, server {num('server_cpu_pct')} %, "
        f"{num('server_cpu_us')} us/request)"
    )
    if result.get("problems"):
        line += f" PROBLEMS: {'; '.join(result['problems'])}"
    return line


# --- HTTP from the orchestrator ---------------------------------------------------------


async def get_json(session: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
        answer.raise_for_status()
        return await answer.json(content_type=None)


async def get_text(session: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
        answer.raise_for_status()
        return await answer.text()


async def wait_until_count(
    session: aiohttp.ClientSession, master_url: str, count: int, timeout: float
) -> float:
    """Follow the registry with blocking queries until it holds `count` services; the time."""
    started = time.perf_counter()
    deadline = started + timeout
    index = 0
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise RuntimeError(f"{master_url} did not reach {count} services in {timeout:g}s")
        wait = max(1, min(int(left), 30))
        body = await get_json(
            session, f"{master_url}/v1/services?index={index}&wait={wait}s", timeout=wait + 5
        )
        if len(body["services"]) >= count:
            return time.perf_counter() - started
        index = body["index"]


def free_port() -> int:
    """A loopback port nothing listens on (the kernel just handed it out and took it back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- statistics ------------------------------------------------------------------------


def percentile(samples: Iterable[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    pos = fraction * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(samples: Iterable[float]) -> float:
    return percentile(samples, 0.5)


Sample = tuple[str, dict[str, str], float]
_SAMPLE_RE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL_RE: Final = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if match:
            labels = dict(_LABEL_RE.findall(match.group(3) or ""))
            samples.append((match.group(1), labels, float(match.group(4))))
    return samples


def metric_sum(samples: list[Sample], name: str) -> float:
    return sum(value for n, _, value in samples if n == name)


def histogram_buckets(samples: list[Sample], name: str) -> list[tuple[float, float]]:
    """[(upper bound, cumulative count)] of one histogram, by bound."""
    buckets = [
        (float(labels["le"]), value)
        for n, labels, value in samples
        if n == f"{name}_bucket" and "le" in labels
    ]
    return sorted(buckets)


def bucket_delta(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The histogram of what was observed between two scrapes."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def histogram_quantile(buckets: list[tuple[float, float]], fraction: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in.

    Past the last finite bound the answer is that bound (a lower bound of the truth).
    """
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = fraction * buckets[-1][1]
    low_bound, low_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return low_bound
            width = count - low_count
            share = (rank - low_count) / width if width else 1.0
            return low_bound + (bound - low_bound) * share
        low_bound, low_count = bound, count
    return low_bound


def bucket_bound(buckets: list[tuple[float, float]], fraction: float) -> float:
    """The upper bound of the bucket holding the quantile: the truth is at most this."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = fraction * buckets[-1][1]
    for bound, count in buckets:
        if count >= rank:
            return bound
    return math.inf


# --- the machine -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
    }


def mib(size: float) -> float:
    return size / 2**20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
