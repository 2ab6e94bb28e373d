"""3. Health-check capacity: N services checked every 10 s against a target swarm.

The swarm (bench/swarm.py) is one aiohttp process on SWARM_PORTS loopback ports; service i
is checked at `/health/i` on one of them. With the faulty mix, 10 % of services point at
`/hang/i` (answers after 30 s, past the 2 s timeout) and 10 % at a port nothing listens on.

Our master (sqlite:///, as by default): the services are PUT through its API, it runs
`settle` seconds, then for `window` seconds we read, by its pid and from its /metrics:
- lag, due to run: the `picoapi_check_lag_seconds` histogram, differenced between two
  scrapes, quantiles interpolated within buckets as Prometheus' histogram_quantile does;
- checks per second (`picoapi_checks_total`), CPU (user + system, % of one core), RSS.
The swarm also times, per service, the gap between two checks minus the interval: how
much later than promised each check came, measured at the target, for both masters.

The picoapi master keeps one thread per service that checks, then sleeps `interval`
(fixed delay, so each round drifts by the check's own time). It has no metrics: its lag is
that swarm-side gap minus interval, its rate the swarm's hits per second. Registering with
it is slow once its threads run; registration stops at a time cap and the run measures the
services it holds by then (the report says how many).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cases import Case, Result, Row, dec, goal
from bench.common import (
    Proc,
    Procs,
    bucket_bound,
    bucket_delta,
    free_port,
    get_json,
    get_text,
    histogram_buckets,
    histogram_quantile,
    loadgen,
    log,
    metric_sum,
    mib,
    parse_prometheus,
)
from bench.modes import Mode

SWARM_PORTS = 1000
INTERVAL = 10
TIMEOUT = "2s"
CONCURRENCY = 64
LAG = "picoapi_check_lag_seconds"
CLOSED_PORTS = 10


async def run(mode: Mode, logs: Path) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    plan = (
        [("picoapi-sidecar", n, False) for n in mode.health_ns]
        + [("picoapi-sidecar", n, True) for n in mode.health_faulty_ns]
        + [("picoapi", n, False) for n in mode.picoapi_health_ns]
        + [("picoapi", n, True) for n in mode.picoapi_health_faulty_ns]
    )
    for system, n, faulty in plan:
        with Procs(logs) as procs:
            if system == "picoapi":
                result = await measure_picoapi(procs, mode, logs, n, faulty)
            else:
                result = await measure_ours(procs, mode, logs, n, faulty)
        runs.append(result)
        log(
            f"health {system:<15} N={n:>6,}{' faulty' if faulty else '       '}: "
            f"lag p50 {result['lag_p50_ms']:8.1f} ms p99 {result['lag_p99_ms']:8.1f} ms, "
            f"{result['checks_per_s']:7,.0f} checks/s (expected {result['expected_per_s']:,.0f}),"
            f" CPU {result['cpu_pct']:5.1f} %, RSS {result['rss_mib']:.0f} MiB"
        )
    return {
        "interval_s": INTERVAL,
        "timeout": TIMEOUT,
        "swarm_ports": SWARM_PORTS,
        "settle_s": mode.health_settle_s,
        "window_s": mode.health_window_s,
        "runs": runs,
    }


async def start_swarm(procs: Procs, logs: Path) -> tuple[Proc, str, list[int]]:
    ports_file = logs / f"swarm-ports-{time.monotonic_ns()}.json"
    swarm, control = await procs.helper(
        "swarm", str(SWARM_PORTS), str(ports_file), str(INTERVAL), name="swarm"
    )
    ports: list[int] = json.loads(ports_file.read_text())
    ports_file.unlink()
    return swarm, f"http://127.0.0.1:{control}", ports


def target_spec(ports: list[int], faulty: bool) -> dict[str, Any]:
    return {
        "swarm_ports": ports,
        "faulty": faulty,
        "closed_ports": [free_port() for _ in range(CLOSED_PORTS)],
    }


async def measure_ours(
    procs: Procs, mode: Mode, logs: Path, n: int, faulty: bool
) -> dict[str, Any]:
    swarm, control, ports = await start_swarm(procs, logs)
    store = logs / f"health-store-{n}-{int(faulty)}-{time.monotonic_ns()}"
    master, url = await procs.master(store=f"sqlite:///{store}/registry.db")
    started = time.perf_counter()
    filled = await loadgen(
        {
            "base": url,
            "concurrency": CONCURRENCY,
            "requests": {
                "kind": "register",
                "n": n,
                "interval": f"{INTERVAL}s",
                "timeout": TIMEOUT,
                **target_spec(ports, faulty),
            },
        }
    )
    registered_in = time.perf_counter() - started
    if filled["ok"] != n:
        raise RuntimeError(f"registered {filled['ok']} of {n}: {filled}")
    await asyncio.sleep(mode.health_settle_s)
    async with aiohttp.ClientSession() as session:
        before = parse_prometheus(await get_text(session, f"{url}/metrics"))
        await session.post(f"{control}/_control/reset")
        cpu0, swarm_cpu0, t0 = master.cpu_seconds(), swarm.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(mode.health_window_s)
        cpu1, swarm_cpu1, t1 = master.cpu_seconds(), swarm.cpu_seconds(), time.perf_counter()
        after = parse_prometheus(await get_text(session, f"{url}/metrics"))
        at_swarm = await get_json(session, f"{control}/_control/report")
    window = t1 - t0
    lags = bucket_delta(histogram_buckets(before, LAG), histogram_buckets(after, LAG))
    checks = metric_sum(after, "picoapi_checks_total") - metric_sum(before, "picoapi_checks_total")
    return {
        "system": "picoapi-sidecar",
        "services": n,
        "faulty": faulty,
        "registered": n,
        "registered_in_s": registered_in,
        "expected_per_s": n / INTERVAL,
        "checks_per_s": checks / window,
        "lag_source": "master histogram",
        "lag_p50_ms": histogram_quantile(lags, 0.50) * 1000,
        "lag_p99_ms": histogram_quantile(lags, 0.99) * 1000,
        "lag_p99_bound_ms": bucket_bound(lags, 0.99) * 1000,
        "lag_over_1s_share": _share_over(lags, 1.0),
        "cpu_pct": 100 * (cpu1 - cpu0) / window,
        "rss_mib": mib(master.rss()),
        "swarm_cpu_pct": 100 * (swarm_cpu1 - swarm_cpu0) / window,
        "swarm": at_swarm,
        "late_at_swarm_p50_ms": at_swarm["late_p50_s"] * 1000,
        "late_at_swarm_p99_ms": at_swarm["late_p99_s"] * 1000,
        "statuses": {
            labels["status"]: int(value)
            for name, labels, value in after
            if name == "picoapi_services" and value
        },
    }


async def measure_picoapi(
    procs: Procs, mode: Mode, logs: Path, n: int, faulty: bool
) -> dict[str, Any]:
    swarm, control, ports = await start_swarm(procs, logs)
    master, url = await procs.picoapi_master()
    started = time.perf_counter()
    filled = await loadgen(
        {
            "base": url,
            "concurrency": CONCURRENCY,
            "max_seconds": mode.picoapi_register_cap_s,
            "requests": {
                "kind": "picoapi",
                "n": n,
                "picoapi_interval": INTERVAL,
                **target_spec(ports, faulty),
            },
        }
    )
    registered_in = time.perf_counter() - started
    held = filled["ok"]
    # A window longer than one interval, so every service is seen twice at the swarm.
    window_s = max(mode.health_window_s, INTERVAL * 1.2)
    await asyncio.sleep(mode.health_settle_s)
    async with aiohttp.ClientSession() as session:
        await session.post(f"{control}/_control/reset")
        cpu0, swarm_cpu0, t0 = master.cpu_seconds(), swarm.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(window_s)
        cpu1, swarm_cpu1, t1 = master.cpu_seconds(), swarm.cpu_seconds(), time.perf_counter()
        at_swarm = await get_json(session, f"{control}/_control/report")
    window = t1 - t0
    return {
        "system": "picoapi",
        "services": n,
        "faulty": faulty,
        "registered": held,
        "registered_in_s": registered_in,
        "expected_per_s": held / INTERVAL,
        # Each thread checks once per (interval + how late it comes): its steady rate. (A
        # window's hit count is biased: its threads started together, so rounds are bunched.)
        "checks_per_s": held / (INTERVAL + at_swarm["late_mean_s"]),
        "lag_source": "swarm: gap between two checks minus the interval",
        "lag_p50_ms": at_swarm["late_p50_s"] * 1000,
        "lag_p99_ms": at_swarm["late_p99_s"] * 1000,
        "lag_p99_bound_ms": math.nan,
        "lag_over_1s_share": math.nan,
        "cpu_pct": 100 * (cpu1 - cpu0) / window,
        "rss_mib": mib(master.rss()),
        "threads": master.ps.num_threads(),
        "swarm_cpu_pct": 100 * (swarm_cpu1 - swarm_cpu0) / window,
        "swarm": at_swarm,
        "late_at_swarm_p50_ms": at_swarm["late_p50_s"] * 1000,
        "late_at_swarm_p99_ms": at_swarm["late_p99_s"] * 1000,
    }


def _share_over(buckets: list[tuple[float, float]], bound: float) -> float:
    total = buckets[-1][1] if buckets else 0.0
    within = dict(buckets).get(bound, 0.0)
    return (total - within) / total if total else math.nan


# --- the report ------------------------------------------------------------------------


def _run_of(result: Result, system: str, services: int, faulty: bool) -> dict[str, Any]:
    for r in result.get("runs") or []:
        if r["system"] == system and r["services"] == services and r["faulty"] == faulty:
            found: dict[str, Any] = r
            return found
    return {}


def checks(result: Result) -> list[Row]:
    ours = _run_of(result, "picoapi-sidecar", 10_000, False)
    faulty = _run_of(result, "picoapi-sidecar", 10_000, True)
    rows = []
    for run, label in (
        (ours, "10,000 services at 10 s: check lag p99"),
        (faulty, "... with 10 % hanging and 10 % refusing: check lag p99"),
    ):
        value = run.get("lag_p99_ms")
        rows.append(
            goal(
                label,
                f"{dec(value, 1)} ms",
                value,
                1000.0,
                baseline="-",
                need=1,
                at_least=False,
                strict=True,
                need_text="< 1 s",
            )
        )
    for run, label in ((ours, "... master CPU"), (faulty, "... master CPU (faulty)")):
        value = run.get("cpu_pct")
        rows.append(
            goal(
                label,
                f"{dec(value, 1)} % of a core",
                value,
                100.0,
                baseline="-",
                need=1,
                at_least=False,
                strict=True,
                need_text="< one core",
            )
        )
    return rows


def headline(result: Result) -> dict[str, Any]:
    ours = _run_of(result, "picoapi-sidecar", 10_000, False)
    faulty = _run_of(result, "picoapi-sidecar", 10_000, True)
    return {
        "check_lag_p50_ms_10k": ours.get("lag_p50_ms"),
        "check_lag_p99_ms_10k": ours.get("lag_p99_ms"),
        "check_lag_p99_ms_10k_faulty": faulty.get("lag_p99_ms"),
        "checks_per_s_10k": ours.get("checks_per_s"),
        "master_cpu_pct_10k": ours.get("cpu_pct"),
        "master_cpu_pct_10k_faulty": faulty.get("cpu_pct"),
        "master_rss_mib_10k": ours.get("rss_mib"),
    }


def section(health: Result) -> list[str]:
    lines = [
        "",
        f"## 3. Health-check capacity (interval {health['interval_s']} s, timeout "
        f"{health['timeout']}, swarm on {health['swarm_ports']} ports, settle "
        f"{health['settle_s']:g} s, window {health['window_s']:g} s)",
        "",
        "| master | N | faulty 20 % | held | checks/s (expected) | lag p50 ms | lag p99 ms |"
        " late at swarm p99 ms | master CPU | master RSS | swarm CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in health["runs"]:
        lines.append(
            f"| {r['system']} | {r['services']:,} | {'yes' if r['faulty'] else 'no'} | "
            f"{r['registered']:,} | {r['checks_per_s']:,.0f} ({r['expected_per_s']:,.0f}) | "
            f"{dec(r['lag_p50_ms'], 1)} | {dec(r['lag_p99_ms'], 1)} | "
            f"{dec(r['late_at_swarm_p99_ms'], 1)} | {r['cpu_pct']:.0f} % | "
            f"{r['rss_mib']:.0f} MiB | {r['swarm_cpu_pct']:.0f} % |"
        )
    lines += [
        "",
        "Lag: ours from the master's histogram; picoapi's is the swarm's (gap between two "
        "checks minus the interval). The histogram's buckets end at 1, 5, 10, 50, 100, 250, "
        '500 ms, ...: a p99 of 4.8 ms reads "between 1 and 5 ms" (interpolated within the '
        "bucket, as Prometheus does). `late at swarm` is that swarm measure for both; the "
        "faulty rows count only the answering 80 % there. picoapi rows hold what it "
        "registered before the time cap; `held` says how many.",
    ]
    return lines


def plots(result: Result, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    runs = result.get("runs")
    if not runs:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        label = f"{r['system']}{' (20 % faulty)' if r['faulty'] else ''}"
        series.setdefault(label, []).append(r)
    for label, points in series.items():
        points.sort(key=lambda r: r["services"])
        xs = [r["services"] for r in points]
        left.plot(xs, [max(r["lag_p99_ms"] or 0.01, 0.01) for r in points], "o-", label=label)
        right.plot(xs, [r["cpu_pct"] for r in points], "o-", label=label)
    left.axhline(1000, color="grey", linestyle="--", linewidth=1)
    left.set_yscale("log")
    left.set_xlabel("services (10 s interval)")
    left.set_ylabel("check lag p99, ms (target < 1,000)")
    right.axhline(100, color="grey", linestyle="--", linewidth=1)
    right.set_xlabel("services (10 s interval)")
    right.set_ylabel("master CPU, % of one core")
    left.legend(fontsize=7)
    fig.suptitle("3. Health-check capacity")
    fig.tight_layout()
    fig.savefig(out / "health.png", dpi=110)
    plt.close(fig)
    return ["health.png"]


CASE = Case(
    name="health",
    order=30,
    run=run,
    checks=checks,
    section=section,
    headline=headline,
    plots=plots,
)
