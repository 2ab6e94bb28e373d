"""A one-member etcd on loopback for the cases that run masters on `etcd://`.

    async with etcd_server.running(logs) as etcd:
        master, url = await procs.master(store=etcd.store_url("/run-1/"))
        rev = await etcd.revision(session)
        cpu = etcd.cpu_seconds()  # utime + stime from /proc/PID/stat

/usr/bin/etcd (or the first `etcd` on PATH) as a child process, through `common.Procs`,
so it is stopped by its pid (SIGTERM, then SIGKILL after a bound) when the block ends,
after everything started inside it; its data directory is a fresh temporary directory,
removed at the end. Two free 127.0.0.1 ports (client, peer); nothing listens elsewhere.

The flags are the test fixture's (tests/etcd_fixture.py), fixed: heartbeat 100 ms,
election timeout 1 s (so the lease minimum TTL stays etcd's usual 2 s), the zap logger
where there is one. Not `--unsafe-no-fsync` (3.5+ only, and 3.4 is what Debian ships):
the benchmark measures etcd as it would run, each commit fsynced to this machine's disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.common import (
    Proc,
    Procs,
    Sample,
    free_port,
    get_text,
    metric_sum,
    parse_prometheus,
)
from bench.wrk import proc_cpu_seconds

CANDIDATES: Final = ("/usr/bin/etcd", "etcd")
HEARTBEAT_MS: Final = 100
ELECTION_MS: Final = 1000
START_TIMEOUT: Final = 30.0
HTTP_TIMEOUT: Final = 5.0
# The smallest key: a range read of it is answered by any member with the store's
# current revision in its header (the tests read it the same way).
REVISION_KEY: Final = base64.b64encode(b"\0").decode()  # "AA=="


def binary() -> str:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server)")


@functools.cache
def _help(path: str) -> str:
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
    return done.stdout + done.stderr


@functools.cache
def version(path: str) -> str:
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"etcd Version: (\S+)", done.stdout + done.stderr)
    return match.group(1) if match else "?"


def _has_flag(path: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}\b", _help(path)) is not None


def argv(path: str, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    flags = [
        path,
        "--name=bench",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=bench={peer}",
        f"--initial-cluster-token=picoapi-bench-{os.getpid()}-{client_port}",
        "--initial-cluster-state=new",
        f"--heartbeat-interval={HEARTBEAT_MS}",
        f"--election-timeout={ELECTION_MS}",
    ]
    if _has_flag(path, "--logger"):  # 3.4 defaults to capnslog and warns about it
        flags += ["--logger=zap", "--log-outputs=stderr"]
    return flags


@dataclass
class Etcd:
    proc: Proc
    client_port: int
    data_dir: Path
    version: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def store_url(self, prefix: str = "") -> str:
        """A master's `--store`: etcd://127.0.0.1:PORT[/PREFIX]."""
        return f"etcd://127.0.0.1:{self.client_port}{prefix}"

    def cpu_seconds(self) -> float:
        """utime + stime of the etcd process (all its threads), from /proc/PID/stat."""
        return proc_cpu_seconds(self.pid)

    async def post(self, session: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> Any:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with session.post(f"{self.url}{path}", json=body, timeout=timeout) as answer:
            payload = await answer.json(content_type=None)
            if answer.status != 200:
                raise RuntimeError(f"etcd {path}: HTTP {answer.status} {payload}")
            return payload

    async def revision(self, session: aiohttp.ClientSession) -> int:
        """The store's revision: one more for every write (put, txn that wrote, delete)."""
        answer = await self.post(session, "/v3/kv/range", {"key": REVISION_KEY})
        return int(answer["header"]["revision"])

    async def changed_keys(
        self, session: aiohttp.ClientSession, since: int, limit: int = 20
    ) -> list[str]:
        """Keys (of those still there) last written after revision `since`."""
        answer = await self.post(
            session,
            "/v3/kv/range",
            {
                "key": REVISION_KEY,
                "range_end": REVISION_KEY,  # "\0": every key from the smallest on
                "keys_only": True,
                "min_mod_revision": str(since + 1),
                "limit": str(limit),
            },
        )
        return [
            base64.b64decode(kv["key"]).decode(errors="replace") for kv in answer.get("kvs") or []
        ]

    async def metrics(self, session: aiohttp.ClientSession) -> list[Sample]:
        """etcd's own /metrics (Prometheus text)."""
        return parse_prometheus(await get_text(session, f"{self.url}/metrics"))

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        answer: dict[str, Any] = await self.post(session, "/v3/maintenance/status", {})
        return answer

    async def wait_leader(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not self.proc.alive():
                    raise RuntimeError(
                        f"etcd exited ({self.proc.proc.returncode}): {self.proc.tail()}"
                    )
                try:
                    if (await self.status(session)).get("leader", "0") != "0":
                        return
                except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError):
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"etcd had no leader within {timeout:g}s: {self.proc.tail()}")

    def disk(self) -> str:
        """The filesystem its data directory is on (etcd fsyncs each commit there)."""
        best, kind = "", "?"
        with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                inside = len(fields) >= 3 and f"{self.data_dir}/".startswith(
                    fields[1].rstrip("/") + "/"
                )
                if inside and len(fields[1]) >= len(best):  # the innermost mount wins
                    best, kind = fields[1], f"{fields[2]} on {fields[0]} ({fields[1]})"
        return kind


FSYNC: Final = "etcd_disk_wal_fsync_duration_seconds"
COMMIT: Final = "etcd_disk_backend_commit_duration_seconds"


def disk_figures(before: list[Sample], after: list[Sample]) -> dict[str, float]:
    """etcd's WAL fsyncs and backend commits between two scrapes: counts, mean ms."""
    found: dict[str, float] = {}
    for key, name in (("fsync", FSYNC), ("commit", COMMIT)):
        count = metric_sum(after, f"{name}_count") - metric_sum(before, f"{name}_count")
        total = metric_sum(after, f"{name}_sum") - metric_sum(before, f"{name}_sum")
        found[f"{key}s"] = count
        found[f"{key}_mean_ms"] = 1000 * total / count if count else float("nan")
    return found


@contextlib.asynccontextmanager
async def running(logs: Path, name: str = "etcd") -> AsyncIterator[Etcd]:
    """A one-member etcd with a leader, for the block; stopped by its pid at the end, its
    temporary data directory removed."""
    path = binary()
    data_dir = Path(tempfile.mkdtemp(prefix="picoapi-bench-etcd-"))
    try:
        with Procs(logs) as procs:
            client_port = free_port()
            peer_port = free_port()
            while peer_port == client_port:
                peer_port = free_port()
            proc = procs.start(name, argv(path, data_dir / "data", client_port, peer_port))
            etcd = Etcd(proc, client_port, data_dir / "data", version(path))
            await etcd.wait_leader()
            yield etcd
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
