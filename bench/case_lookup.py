"""2. Lookup with 10,000 registered: by tag (10 match), by id, the full list, and a
blocking query woken by a change.

One master on sqlite:/// holds the services (reads never touch the store). The hello
ceiling answers the same GETs with a small JSON. Rates and latencies come from the load
generator (64 concurrent, its own process); the full list (about 6 MB an answer) is sent
by 8 at a time, since 64 in flight would only measure queueing. The blocking query: 64
watchers park on `?index=N`, one PUT changes a service, and each watcher's wait from the
PUT to its answer is timed (in this process).

This client saturates its core near the hello server's rate, which hides part of a server's
cost. Where `wrk` is installed (`make bench` installs it), the hello and tag GETs are also
measured with `wrk -t1 -c64` for WRK_SECONDS: a cross-check no slower client flatters.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Proc, Procs, get_json, loadgen, log, median, percentile
from bench.modes import Mode
from bench.workloads import registration

CONCURRENCY = 64
LIST_CONCURRENCY = 8
WATCHERS = 64
WRK_SECONDS = {"full": 4, "quick": 2}


async def run(mode: Mode, logs: Path) -> dict[str, Any]:
    services = mode.lookup_services
    runs: dict[str, list[dict[str, Any]]] = {}
    with Procs(logs) as procs:
        hello_proc, hello_port = await procs.helper("hello")
        hello = f"http://127.0.0.1:{hello_port}"
        master_proc, master = await procs.master(store=f"sqlite:///{logs}/lookup-store/registry.db")
        filled = await loadgen(
            {
                "base": master,
                "concurrency": CONCURRENCY,
                "requests": {"kind": "register", "n": services, "interval": "1h"},
            }
        )
        if filled["ok"] != services:
            raise RuntimeError(f"registered only {filled['ok']} of {services}: {filled}")
        tag = {"kind": "tag", "n": mode.lookup_n}
        by_id = {"kind": "id", "n": mode.lookup_n, "services": services}
        cases: list[tuple[str, Proc, str, dict[str, Any], int]] = [
            ("hello", hello_proc, hello, tag, CONCURRENCY),
            ("tag", master_proc, master, tag, CONCURRENCY),
            ("id", master_proc, master, by_id, CONCURRENCY),
            ("list", master_proc, master, {"kind": "list", "n": mode.list_n}, LIST_CONCURRENCY),
        ]
        for repeat in range(mode.repeats):
            for name, server, base, requests, concurrency in cases:
                result = await loadgen(
                    {
                        "base": base,
                        "concurrency": concurrency,
                        "max_seconds": 60,
                        "requests": requests,
                    },
                    server,
                )
                runs.setdefault(name, []).append(result)
                log(
                    f"lookup {name:<6} #{repeat + 1}: {result['rps']:8,.0f}/s "
                    f"p50 {result['p50_ms']:6.2f} ms p99 {result['p99_ms']:6.2f} ms "
                    f"(client CPU {result['client_cpu_pct']:.0f} %, server "
                    f"{result['server_cpu_pct']:.0f} %, {result['server_cpu_us']:.0f} us/request)"
                )
        wrk = await wrk_cross_check(
            {"hello": hello, "tag": master}, mode.repeats, WRK_SECONDS.get(mode.name, 2)
        )
        async with aiohttp.ClientSession() as session:
            tag_body = await get_json(session, f"{master}/v1/services?tag=grp-7")
            matched = len(tag_body["services"])
            wake = await blocking_wake(session, master, mode.wake_rounds)
    log(f"lookup wake: p50 {wake['p50_ms']:.1f} ms p99 {wake['p99_ms']:.1f} ms")
    summary = {
        name: {
            "rps": median(r["rps"] for r in results),
            "rps_runs": [round(r["rps"], 1) for r in results],
            "p50_ms": median(r["p50_ms"] for r in results),
            "p99_ms": median(r["p99_ms"] for r in results),
            "concurrency": results[0]["concurrency"],
            "client_cpu_pct": median(r["client_cpu_pct"] for r in results),
            "server_cpu_pct": median(r["server_cpu_pct"] for r in results),
            "server_cpu_us": median(r["server_cpu_us"] for r in results),
            "errors": [r["errors"] for r in results],
        }
        for name, results in runs.items()
    }
    return {
        "services": services,
        "tag_matches": matched,
        "repeats": mode.repeats,
        "queries": summary,
        "blocking": wake,
        "wrk": wrk,
    }


async def wrk_cross_check(
    bases: dict[str, str], repeats: int, seconds: int
) -> dict[str, Any] | None:
    """Median requests/s of `wrk` on the same tag GET, per base; None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        log("lookup: wrk is not installed; no cross-check")
        return None
    rates: dict[str, list[float]] = {name: [] for name in bases}
    for _ in range(repeats):
        for name, base in bases.items():
            child = await asyncio.create_subprocess_exec(
                wrk,
                "-t1",
                "-c64",
                f"-d{seconds}s",
                f"{base}/v1/services?tag=grp-7",
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                out, _ = await asyncio.wait_for(child.communicate(), seconds + 30)
            finally:
                if child.returncode is None:  # timed out: stop it by its pid
                    child.kill()
                    await child.wait()
            match = re.search(rb"Requests/sec:\s+([\d.]+)", out)
            if match is None:
                raise RuntimeError(f"wrk printed no rate: {out.decode()[-500:]}")
            rates[name].append(float(match.group(1)))
    medians = {name: median(values) for name, values in rates.items()}
    log(
        f"lookup wrk: hello {medians['hello']:,.0f}/s, tag {medians['tag']:,.0f}/s "
        f"({medians['tag'] / medians['hello']:.0%})"
    )
    return {"seconds": seconds, "rps": medians, "runs": rates}


async def blocking_wake(session: aiohttp.ClientSession, master: str, rounds: int) -> dict[str, Any]:
    """`WATCHERS` blocking queries parked on the index; one PUT; how long until each answers.

    A health check may move the index on its own (a first result changes a status); a
    watcher answered before the PUT was sent parks again on the new index.
    """
    waits: list[float] = []
    round_times: list[float] = []
    for n in range(rounds):
        index = await _index(session, master)
        url = f"{master}/v1/services?tag=grp-{n % 1000}&wait=30s&index="
        sent: list[float] = []
        woke: list[float] = []
        watchers = [
            asyncio.create_task(_watch(session, url, index, sent, woke)) for _ in range(WATCHERS)
        ]
        await asyncio.sleep(0.5)  # let every one of them park at the master
        body = registration(1, "http://127.0.0.1:9/health", "1h")
        body["meta"]["round"] = str(n)
        sent.append(time.perf_counter())
        async with session.put(f"{master}/v1/services/svc-1", json=body) as answer:
            answer.raise_for_status()
        await asyncio.wait_for(asyncio.gather(*watchers), 35)
        waits.extend(t - sent[0] for t in woke)
        round_times.append(max(woke) - sent[0])
    return {
        "watchers": WATCHERS,
        "rounds": rounds,
        "p50_ms": percentile(waits, 0.5) * 1000,
        "p99_ms": percentile(waits, 0.99) * 1000,
        "max_ms": max(waits) * 1000,
        "answers_per_s": WATCHERS / median(round_times) if round_times else 0.0,
    }


async def _watch(
    session: aiohttp.ClientSession, url: str, index: int, sent: list[float], woke: list[float]
) -> None:
    for _ in range(100):
        async with session.get(f"{url}{index}", timeout=aiohttp.ClientTimeout(total=40)) as answer:
            await answer.read()
            index = int(answer.headers["X-Picoapi-Index"])
        if sent:
            woke.append(time.perf_counter())
            return
    raise RuntimeError("the registry index kept moving before the PUT")


async def _index(session: aiohttp.ClientSession, master: str) -> int:
    async with session.get(f"{master}/healthz") as answer:
        return int(answer.headers["X-Picoapi-Index"])
