"""The probes: one small object per kind of check, each turning one attempt into a CheckResult.

A probe never raises for the service's failure: a refused connection, a timeout, a dead
process or a non-zero exit is a critical (or warning) result whose output says why. The
status mapping, the output cap and the redirect rule are the constants below, the same as
the master applies to the sidecar's /health (master.health), so a service reads the same
whether it is checked directly or through its sidecar.

`SharedCheck` wraps one probe so that concurrent /health requests share one run: a burst
of callers costs the service one request, not one each. It owns that run's task, and its
owner closes it at shutdown.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Final, TypedDict, TypeVar, assert_never

import aiohttp
import psutil

from master.model import OUTPUT_MAX, CheckResult, Status, format_duration
from master.shared.capped import read_capped
from master.shared.daemon import cancel_and_wait
from master.shared.probe import critical, decode_capped, describe_os_error, elapsed_ms, probe_http
from sidecar.config import CheckConfig, ExecCheck, HttpCheck, ProcessCheck, TcpCheck

USER_AGENT: Final = "picoapi-sidecar-check"

# Exec: the Nagios convention Consul follows.
EXEC_PASSING_EXIT: Final = 0
EXEC_WARNING_EXIT: Final = 1

_T = TypeVar("_T")


class ProcessFigures(TypedDict):
    """What /health shows of a checked process; None where the figure is not known."""

    pid: int
    cpu_percent: float | None  # None on the first sample: psutil needs a previous one
    rss_bytes: int
    threads: int
    open_files: int | None  # None when the process belongs to a user we may not inspect
    uptime_s: float


class Check(abc.ABC):
    """One probe of the service. `run` returns the outcome; it never raises for a failure."""

    kind: ClassVar[str]
    # Filled only by the process probe, after each run; None while nothing runs.
    process: ProcessFigures | None = None

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    @abc.abstractmethod
    async def run(self) -> CheckResult: ...


def build_check(config: CheckConfig, session: aiohttp.ClientSession) -> Check:
    """The probe a configuration asks for; `session` is shared and owned by the caller."""
    probe = config.probe
    if isinstance(probe, HttpCheck):
        return HttpProbe(session, probe.url, config.timeout)
    if isinstance(probe, TcpCheck):
        return TcpProbe(probe.host, probe.port, config.timeout)
    if isinstance(probe, ProcessCheck):
        return ProcessProbe(probe, config.timeout)
    if isinstance(probe, ExecCheck):
        return ExecProbe(probe.argv, config.timeout)
    assert_never(probe)


class SharedCheck:
    """Single flight: concurrent callers of `run` await one probe run, and a caller that
    goes away (a /health client that hangs up) does not cancel it for the others."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.last: CheckResult | None = None
        self._inflight: asyncio.Task[CheckResult] | None = None

    @property
    def kind(self) -> str:
        return self.check.kind

    @property
    def process(self) -> ProcessFigures | None:
        return self.check.process

    async def run(self) -> CheckResult:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._run_once())
        return await asyncio.shield(self._inflight)

    async def close(self) -> None:
        """At shutdown, once nothing serves /health: cancel a run still in flight and wait
        for it to end (an exec probe's process group is killed on the way out)."""
        await cancel_and_wait(self._inflight)

    async def _run_once(self) -> CheckResult:
        try:
            self.last = await self.check.run()
            return self.last
        finally:
            self._inflight = None


# --- HTTP ------------------------------------------------------------------------------


class HttpProbe(Check):
    """GET the URL once; redirects are not followed and at most OUTPUT_MAX bytes are read."""

    kind = "http"

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        super().__init__(timeout)
        self.session = session
        self.url = url

    async def run(self) -> CheckResult:
        return await probe_http(self.session, self.url, self.timeout, user_agent=USER_AGENT)


# --- TCP -------------------------------------------------------------------------------


class TcpProbe(Check):
    """Open a connection and close it: passing if the service accepts one in time."""

    kind = "tcp"

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(timeout)
        self.host = host
        self.port = port

    async def run(self) -> CheckResult:
        started = time.perf_counter()
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
        except TimeoutError:
            return critical(f"timed out after {format_duration(self.timeout)}", started)
        except OSError as exc:
            return critical(describe_os_error(exc, self.host, self.port), started)
        return CheckResult(Status.PASSING, f"connected to {where}", elapsed_ms(started))


# --- process ---------------------------------------------------------------------------


class _NotRunning(Exception):
    """Why no process answers to the check; becomes a critical result's output."""


class ProcessProbe(Check):
    """Passing while the process (by pidfile, name or command line) runs.

    psutil reads /proc, which blocks, and a scan by name reads it for every process on the
    host, so the work runs in a thread. The process found is kept between runs: the next
    run only confirms it still lives (scans stay rare), and cpu_percent, which measures
    since the previous call on the same object, has its previous sample.
    """

    kind = "process"

    def __init__(self, spec: ProcessCheck, timeout: float) -> None:
        super().__init__(timeout)
        self.spec = spec
        self._found: psutil.Process | None = None
        # A run abandoned at its timeout may still be busy in its thread; the next waits.
        self._lock = threading.Lock()

    async def run(self) -> CheckResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                status, output, figures = await asyncio.to_thread(self._probe)
        except TimeoutError:
            self.process = None
            return critical(f"timed out after {format_duration(self.timeout)}", started)
        self.process = figures
        return CheckResult(status, output, elapsed_ms(started))

    def _probe(self) -> tuple[Status, str, ProcessFigures | None]:
        with self._lock:
            try:
                proc, fresh = self._find()
                with proc.oneshot():
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        raise _NotRunning(f"process {proc.pid} is a zombie (exited, not reaped)")
                    name = proc.name()
                    figures = _figures(proc, fresh)
            except _NotRunning as exc:
                self._found = None
                return Status.CRITICAL, str(exc), None
            except psutil.NoSuchProcess as exc:
                self._found = None
                return Status.CRITICAL, f"process {exc.pid} exited", None
            except psutil.Error as exc:
                self._found = None
                return Status.CRITICAL, f"cannot inspect the process: {exc}", None
            self._found = proc
            return Status.PASSING, f"process {proc.pid} ({name}) is running", figures

    def _find(self) -> tuple[psutil.Process, bool]:
        """The process to report on, and whether it is new (has no cpu sample yet)."""
        spec, cached = self.spec, self._found
        if spec.pidfile is not None:
            pid = _read_pidfile(spec.pidfile)
            if cached is not None and cached.pid == pid and _alive(cached):
                return cached, False
            try:
                return psutil.Process(pid), True
            except psutil.NoSuchProcess:
                raise _NotRunning(f"no process {pid} (from pidfile {spec.pidfile})") from None
        if cached is not None and _alive(cached):
            return cached, False
        return self._scan(), True

    def _scan(self) -> psutil.Process:
        """The oldest match: for nginx or gunicorn that is the master, not a passing worker."""
        name, needle, own_pid = self.spec.name, self.spec.cmdline or "", os.getpid()
        matches = []
        for proc in psutil.process_iter(["name", "cmdline", "status", "create_time"]):
            info = proc.info
            if proc.pid == own_pid or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if name is not None:
                matched = info["name"] == name
            else:
                matched = needle in " ".join(info["cmdline"] or ())
            if matched:
                matches.append(proc)
        if not matches:
            if name is not None:
                raise _NotRunning(f"no process named {name!r}")
            raise _NotRunning(f"no process with {needle!r} in its command line")
        return min(matches, key=lambda proc: proc.info["create_time"] or 0.0)


def _alive(proc: psutil.Process) -> bool:
    """is_running compares the start time too, so a reused pid is not taken for ours."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read_pidfile(path: str) -> int:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise _NotRunning(f"pidfile {path} does not exist") from None
    except OSError as exc:
        raise _NotRunning(f"cannot read pidfile {path}: {exc.strerror}") from None
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    if not first.isdigit() or int(first) == 0:
        raise _NotRunning(f"pidfile {path} holds no pid: {text[:40]!r}")
    return int(first)


def _figures(proc: psutil.Process, fresh: bool) -> ProcessFigures:
    cpu = proc.cpu_percent(interval=None)  # on a fresh object this only takes the sample
    return {
        "pid": proc.pid,
        "cpu_percent": None if fresh else cpu,
        "rss_bytes": proc.memory_info().rss,
        "threads": proc.num_threads(),
        "open_files": _unless_denied(lambda: len(proc.open_files())),
        "uptime_s": round(time.time() - proc.create_time(), 3),
    }


def _unless_denied(figure: Callable[[], _T]) -> _T | None:
    """Another user's process shows its counters but not its file table."""
    try:
        return figure()
    except psutil.AccessDenied:
        return None


# --- exec ------------------------------------------------------------------------------


class ExecProbe(Check):
    """Run argv without a shell: exit 0 passing, 1 warning, anything else critical.

    The command runs in its own session, so at the timeout its whole process group is
    killed: a script's children go with it instead of piling up one per check.
    """

    kind = "exec"

    def __init__(self, argv: tuple[str, ...], timeout: float) -> None:
        super().__init__(timeout)
        self.argv = argv

    async def run(self) -> CheckResult:
        started = time.perf_counter()
        program = self.argv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            return critical(f"cannot run {program}: no such executable", started)
        except PermissionError:
            return critical(f"cannot run {program}: permission denied", started)
        except OSError as exc:
            return critical(f"cannot run {program}: {exc.strerror or exc}", started)
        assert proc.stdout is not None  # asked for with PIPE
        finished = False
        try:
            async with asyncio.timeout(self.timeout):
                kept, _ = await read_capped(proc.stdout, OUTPUT_MAX, drain=True)
                output = decode_capped(kept)
                code = await proc.wait()
            finished = True
        except TimeoutError:
            return critical(f"timed out after {format_duration(self.timeout)}", started)
        finally:
            # Timed out or cancelled: the group goes, also a child that still holds the
            # pipe after the command itself has exited.
            if not finished:
                with contextlib.suppress(ProcessLookupError):  # the group is already gone
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if code == EXEC_PASSING_EXIT:
            status = Status.PASSING
        elif code == EXEC_WARNING_EXIT:
            status = Status.WARNING
        else:
            status = Status.CRITICAL
        if code < 0:
            output = output or f"killed by signal {signal.Signals(-code).name}"
        return CheckResult(status, output or f"exit status {code}", elapsed_ms(started))
