"""5. Sidecar footprint: memory and CPU of a real sidecar beside the Node.js service.

A master (memory://) checks the sidecar every 10 s, as it would in production; the sidecar
runs its http check against the service for each. Beside it runs the floor (bench/floor.py:
a bare Python process importing aiohttp, pyyaml, psutil and structlog, serving one route),
started at the same time and measured in the same window. After the sidecar registered,
both sit idle for `idle_s`: CPU is (user + system) over that window, RSS and USS at its end.

Then `/health` overhead: sequential GETs, alternating the sidecar's /health and the
service's /healthz over one keep-alive connection each; the overhead is the difference of
the two medians (and of the two p99s).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cases import Case, Result, Row, dec, goal
from bench.common import Procs, free_port, log, mib, percentile
from bench.modes import Mode
from bench.sidecars import follow, sidecar_yaml

SETTLE_S = 3.0
WARMUP_CALLS = 30


async def run(mode: Mode, logs: Path) -> dict[str, Any]:
    with Procs(logs) as procs:
        _, master = await procs.master(name="footprint-master")
        _, node_port = await procs.node_service()
        listen = free_port()
        config = logs / "footprint-sidecar.yaml"
        config.write_text(
            sidecar_yaml(
                service_id="footprint-1",
                service_port=node_port,
                master_url=master,
                listen_port=listen,
                tags=["footprint"],
            )
        )
        floor, floor_port = await procs.helper("floor")
        sidecar = await procs.sidecar(config)
        async with aiohttp.ClientSession() as session:
            await follow(
                session,
                master,
                "footprint-1",
                lambda r: r is not None and r["status"] == "passing",
                30,
            )
        await asyncio.sleep(SETTLE_S)
        cpu0, floor_cpu0, t0 = sidecar.cpu_seconds(), floor.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(mode.idle_s)
        cpu1, floor_cpu1, t1 = sidecar.cpu_seconds(), floor.cpu_seconds(), time.perf_counter()
        memory: dict[str, Any] = {
            "sidecar_rss_mib": mib(sidecar.rss()),
            "sidecar_uss_mib": mib(sidecar.uss()),
            "floor_rss_mib": mib(floor.rss()),
            "floor_uss_mib": mib(floor.uss()),
            "sidecar_event_loop": sidecar.event_loop(),
            "floor_event_loop": floor.event_loop(),
        }
        window = t1 - t0
        calls = await health_overhead(
            f"http://127.0.0.1:{listen}/health",
            f"http://127.0.0.1:{node_port}/healthz",
            mode.health_calls,
        )
        del floor_port
    result = {
        "idle_s": window,
        **memory,
        "rss_over_floor": memory["sidecar_rss_mib"] / memory["floor_rss_mib"] - 1,
        "sidecar_idle_cpu_pct": 100 * (cpu1 - cpu0) / window,
        "floor_idle_cpu_pct": 100 * (floor_cpu1 - floor_cpu0) / window,
        **calls,
    }
    log(
        f"footprint: sidecar RSS {result['sidecar_rss_mib']:.1f} MiB (USS "
        f"{result['sidecar_uss_mib']:.1f}) vs floor {result['floor_rss_mib']:.1f} MiB (USS "
        f"{result['floor_uss_mib']:.1f}); idle CPU {result['sidecar_idle_cpu_pct']:.3f} %; "
        f"/health adds {result['health_overhead_p50_ms']:.3f} ms at p50, "
        f"{result['health_overhead_p99_ms']:.3f} ms at p99"
    )
    return result


async def health_overhead(sidecar_url: str, direct_url: str, calls: int) -> dict[str, Any]:
    via_sidecar: list[float] = []
    direct: list[float] = []
    limit = aiohttp.TCPConnector(limit=1)
    limit_direct = aiohttp.TCPConnector(limit=1)
    async with (
        aiohttp.ClientSession(connector=limit) as to_sidecar,
        aiohttp.ClientSession(connector=limit_direct) as to_service,
    ):
        for n in range(WARMUP_CALLS + calls):
            for session, url, samples in (
                (to_sidecar, sidecar_url, via_sidecar),
                (to_service, direct_url, direct),
            ):
                started = time.perf_counter()
                async with session.get(url) as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"{url} answered {answer.status}")
                if n >= WARMUP_CALLS:
                    samples.append(time.perf_counter() - started)
    sidecar_p50, sidecar_p99 = percentile(via_sidecar, 0.5), percentile(via_sidecar, 0.99)
    direct_p50, direct_p99 = percentile(direct, 0.5), percentile(direct, 0.99)
    return {
        "health_calls": calls,
        "sidecar_health_p50_ms": sidecar_p50 * 1000,
        "sidecar_health_p99_ms": sidecar_p99 * 1000,
        "direct_healthz_p50_ms": direct_p50 * 1000,
        "direct_healthz_p99_ms": direct_p99 * 1000,
        "health_overhead_p50_ms": (sidecar_p50 - direct_p50) * 1000,
        "health_overhead_p99_ms": (sidecar_p99 - direct_p99) * 1000,
    }


# --- the report ------------------------------------------------------------------------


def checks(foot: Result) -> list[Row]:
    rss, floor = foot.get("sidecar_rss_mib"), foot.get("floor_rss_mib")
    cpu = foot.get("sidecar_idle_cpu_pct")
    over = foot.get("health_overhead_p50_ms")
    return [
        goal(
            "Sidecar RSS vs the floor",
            f"{dec(rss, 1)} MiB vs {dec(floor, 1)} MiB",
            rss,
            floor,
            baseline="-",
            need=1.1,
            at_least=False,
            strict=True,
            need_text="within 10 % (< 1.1x)",
            problems=_loop_problems(foot),
        ),
        goal(
            "Sidecar idle CPU",
            f"{dec(cpu, 3)} % of a core",
            cpu,
            0.5,
            baseline="-",
            need=1,
            at_least=False,
            strict=True,
            need_text="< 0.5 %",
        ),
        goal(
            "Sidecar /health adds, at the median",
            f"{dec(over, 3)} ms",
            over,
            1.0,
            baseline="-",
            need=1,
            at_least=False,
            strict=True,
            need_text="< 1 ms",
        ),
    ]


def _loop_problems(foot: Result) -> list[str]:
    sidecar, floor = foot.get("sidecar_event_loop"), foot.get("floor_event_loop")
    if sidecar and floor and sidecar != floor:
        return [f"the sidecar runs {sidecar}, the floor {floor}: not the same event loop"]
    return []


def headline(foot: Result) -> dict[str, Any]:
    keys = (
        "sidecar_rss_mib",
        "sidecar_uss_mib",
        "floor_rss_mib",
        "floor_uss_mib",
        "sidecar_idle_cpu_pct",
        "health_overhead_p50_ms",
        "health_overhead_p99_ms",
    )
    return {key: foot.get(key) for key in keys}


def section(foot: Result) -> list[str]:
    return [
        "",
        f"## 5. Sidecar footprint (idle {foot['idle_s']:.0f} s, {foot['health_calls']:,} "
        "sequential /health calls)",
        "",
        "| process | RSS MiB | USS MiB | idle CPU |",
        "|---|---:|---:|---:|",
        f"| picoapi-sidecar ({foot.get('sidecar_event_loop', '-')}) | "
        f"{foot['sidecar_rss_mib']:.1f} | {foot['sidecar_uss_mib']:.1f} | "
        f"{foot['sidecar_idle_cpu_pct']:.3f} % |",
        "| floor (aiohttp + pyyaml + psutil + structlog, one route; "
        f"{foot.get('floor_event_loop', '-')}) | "
        f"{foot['floor_rss_mib']:.1f} | {foot['floor_uss_mib']:.1f} | "
        f"{foot['floor_idle_cpu_pct']:.3f} % |",
        "",
        "| call | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| sidecar `/health` (runs the http check) | {foot['sidecar_health_p50_ms']:.3f} | "
        f"{foot['sidecar_health_p99_ms']:.3f} |",
        f"| the service's `/healthz` directly | {foot['direct_healthz_p50_ms']:.3f} | "
        f"{foot['direct_healthz_p99_ms']:.3f} |",
        f"| **added by the sidecar** | {foot['health_overhead_p50_ms']:.3f} | "
        f"{foot['health_overhead_p99_ms']:.3f} |",
    ]


def plots(foot: Result, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    if "sidecar_rss_mib" not in foot:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.6))
    labels = ["RSS", "USS"]
    x = range(len(labels))
    ax.bar(
        [i - 0.2 for i in x],
        [foot["sidecar_rss_mib"], foot["sidecar_uss_mib"]],
        0.4,
        label="sidecar",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [foot["floor_rss_mib"], foot["floor_uss_mib"]],
        0.4,
        label="floor",
    )
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("MiB")
    ax.legend(fontsize=8)
    ax.set_title("5. Sidecar vs floor")
    fig.tight_layout()
    fig.savefig(out / "footprint.png", dpi=110)
    plt.close(fig)
    return ["footprint.png"]


CASE = Case(
    name="footprint",
    order=50,
    run=run,
    checks=checks,
    section=section,
    headline=headline,
    plots=plots,
)
