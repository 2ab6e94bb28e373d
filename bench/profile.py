"""Where the master's time goes under the registration load: py-spy on its pid.

Records the master (sqlite:///) while the load generator PUTs services, and writes
`profile-registration.txt` (the functions with the largest share of the event loop's
samples, inclusive and self) and `profile-registration.folded` (py-spy's folded stacks, for
any flame-graph tool or speedscope).
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

from bench.common import BIN, RESULTS, Procs, loadgen, log

SERVICES = 10_000
RATE_HZ = 200
TOP = 40


async def run(logs: Path) -> dict[str, Any]:
    raw = logs / "profile.raw"
    with Procs(logs) as procs:
        master, url = await procs.master(store=f"sqlite:///{logs}/profile-store/registry.db")
        spy = procs.start(
            "py-spy",
            [
                str(BIN / "py-spy"),
                "record",
                "--pid",
                str(master.pid),
                "--rate",
                str(RATE_HZ),
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
        )
        await asyncio.sleep(1.0)  # py-spy attaches
        result = await loadgen(
            {
                "base": url,
                "concurrency": 64,
                "requests": {"kind": "register", "n": SERVICES, "interval": "1h"},
            }
        )
        spy.interrupt()  # as Ctrl-C: py-spy writes what it has and exits
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing: {spy.tail()}")
    text = summarize(raw.read_text())
    (RESULTS / "profile-registration.txt").write_text(
        f"py-spy of the master (sqlite:///) under {SERVICES:,} PUTs from 64 clients "
        f"({result['rps']:,.0f}/s while profiled)\n\n{text}"
    )
    (RESULTS / "profile-registration.folded").write_text(raw.read_text())
    log(f"profile: results/profile-registration.txt ({result['rps']:,.0f} PUT/s profiled)")
    return {"rps_while_profiled": result["rps"], "top": text.splitlines()[:30]}


def summarize(raw: str) -> str:
    """Shares of the main (event loop) thread's samples, by function."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or "run_forever" not in stack:
            continue  # not the event loop's thread (the store's writer thread, idle)
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    lines = [f"{total} samples of the event loop thread", "", "inclusive:"]
    lines += [f"{100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(TOP)]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:5.1f} %  {name}" for name, n in own.most_common(TOP // 2)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`put_service (master/api.py:201)` -> `put_service (master/api.py)`."""
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    for marker in ("site-packages/", "/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"
