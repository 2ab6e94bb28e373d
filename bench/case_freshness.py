"""4. Freshness: how soon the master's view follows the world.

- Death to critical: a sidecar checks the Node.js service every 1 s (timeout 500 ms); the
  service is killed (SIGKILL) at a random phase of that second; we time until the master
  reports it critical. Target: interval + timeout + 0.5 s = 2 s.
- Tag edit to master: the sidecar's YAML is replaced (atomic rename) with one more tag;
  we time until the master shows it. Target: under 1 s.
- Master restart, empty store: several sidecars (resync 5 s) with a master on memory://;
  the master is stopped and started again on the same port; we time until every service
  is back, from the new master's start and from the old one's stop.

Every wait is a blocking query on the master (it answers when its index moves), not a poll.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cases import Case, Result, Row, dec, get, goal
from bench.common import Procs, free_port, log, median, wait_until_count
from bench.modes import Mode
from bench.sidecars import follow, sidecar_yaml, write_atomically

INTERVAL = "1s"
TIMEOUT = "500ms"
RESYNC = "5s"
STATUS_TIMEOUT = 20.0


def _status(wanted: str) -> Any:
    return lambda record: record is not None and record["status"] == wanted


async def run(mode: Mode, logs: Path) -> dict[str, Any]:
    death, edit = await death_and_edit(mode, logs)
    restart = await master_restart(mode, logs)
    log(
        f"freshness: death->critical median {median(death):.2f} s (max {max(death):.2f}), "
        f"tag edit median {median(edit):.3f} s (max {max(edit):.3f}), restart: all "
        f"{restart['sidecars']} back {restart['from_start_s']:.2f} s after the new master"
    )
    return {
        "check_interval": INTERVAL,
        "check_timeout": TIMEOUT,
        "death_to_critical_s": death,
        "tag_edit_s": edit,
        "restart": restart,
    }


async def death_and_edit(mode: Mode, logs: Path) -> tuple[list[float], list[float]]:
    death: list[float] = []
    edit: list[float] = []
    with Procs(logs) as procs:
        _, master = await procs.master()
        node, node_port = await procs.node_service()
        listen = free_port()
        config = logs / "freshness-sidecar.yaml"
        tags = ["a", "b"]

        def yaml_text() -> str:
            return sidecar_yaml(
                service_id="fresh-1",
                service_port=node_port,
                master_url=master,
                listen_port=listen,
                tags=tags,
                interval=INTERVAL,
                timeout=TIMEOUT,
            )

        config.write_text(yaml_text())
        await procs.sidecar(config)
        async with aiohttp.ClientSession() as session:
            for _ in range(mode.freshness_rounds):
                await follow(session, master, "fresh-1", _status("passing"), STATUS_TIMEOUT)
                await asyncio.sleep(random.uniform(0.2, 1.2))  # a random phase of the check
                killed_at = time.perf_counter()
                node.kill()
                _, seen = await follow(
                    session, master, "fresh-1", _status("critical"), STATUS_TIMEOUT
                )
                death.append(seen - killed_at)
                node, _ = await procs.node_service(port=node_port)
            for n in range(mode.freshness_rounds):
                await asyncio.sleep(random.uniform(0.2, 0.8))  # a random phase of the poll
                tag = f"edit-{n}"
                tags.append(tag)
                edited_at = time.perf_counter()
                write_atomically(config, yaml_text())
                _, seen = await follow(
                    session,
                    master,
                    "fresh-1",
                    lambda record, tag=tag: record is not None and tag in record["tags"],
                    STATUS_TIMEOUT,
                )
                edit.append(seen - edited_at)
    return death, edit


async def master_restart(mode: Mode, logs: Path) -> dict[str, Any]:
    count = mode.restart_sidecars
    with Procs(logs) as procs:
        listen = f"127.0.0.1:{free_port()}"
        master_proc, master = await procs.master(listen=listen, name="restart-master")
        _, node_port = await procs.node_service()
        for i in range(count):
            path = logs / f"restart-sidecar-{i}.yaml"
            path.write_text(
                sidecar_yaml(
                    service_id=f"restart-{i}",
                    service_port=node_port,
                    master_url=master,
                    listen_port=free_port(),
                    tags=["restart"],
                    resync=RESYNC,
                )
            )
            await procs.sidecar(path, name=f"restart-sidecar-{i}")
        async with aiohttp.ClientSession() as session:
            await wait_until_count(session, master, count, 30)
            stopped_at = time.perf_counter()
            master_proc.stop()
            master_proc, _ = await procs.master(listen=listen, name="restart-master")
            up_at = time.perf_counter()
            await wait_until_count(session, master, count, 60)
            back_at = time.perf_counter()
    return {
        "sidecars": count,
        "resync": RESYNC,
        "from_start_s": back_at - up_at,
        "from_stop_s": back_at - stopped_at,
        "restart_gap_s": up_at - stopped_at,
    }


# --- the report ------------------------------------------------------------------------


def _median_or_none(values: list[float] | None) -> float | None:
    return median(values) if values else None


def _max_or_none(values: list[float] | None) -> float | None:
    return max(values) if values else None


def checks(result: Result) -> list[Row]:
    death, death_max = (
        _median_or_none(result.get("death_to_critical_s")),
        _max_or_none(result.get("death_to_critical_s")),
    )
    edit, edit_max = (
        _median_or_none(result.get("tag_edit_s")),
        _max_or_none(result.get("tag_edit_s")),
    )
    return [
        goal(
            "Death to critical, worst round",
            f"median {dec(death, 2)} s, worst {dec(death_max, 2)} s",
            death_max,
            2.0,
            baseline="-",
            need=1,
            at_least=False,
            need_text="<= interval + timeout + 0.5 s (2 s)",
        ),
        goal(
            "Tag edit to master, worst round",
            f"median {dec(edit, 3)} s, worst {dec(edit_max, 3)} s",
            edit_max,
            1.0,
            baseline="-",
            need=1,
            at_least=False,
            strict=True,
            need_text="< 1 s",
        ),
    ]


def headline(result: Result) -> dict[str, Any]:
    return {
        "death_to_critical_s": _median_or_none(result.get("death_to_critical_s")),
        "death_to_critical_max_s": _max_or_none(result.get("death_to_critical_s")),
        "tag_edit_to_master_s": _median_or_none(result.get("tag_edit_s")),
        "tag_edit_to_master_max_s": _max_or_none(result.get("tag_edit_s")),
        "restart_all_back_s": get(result, "restart", "from_start_s"),
    }


def section(fresh: Result) -> list[str]:
    death, edit, restart = fresh["death_to_critical_s"], fresh["tag_edit_s"], fresh["restart"]
    return [
        "",
        "## 4. Freshness",
        "",
        "| what | median | worst | rounds |",
        "|---|---:|---:|---:|",
        f"| death to critical (check {fresh['check_interval']}, timeout "
        f"{fresh['check_timeout']}) | {median(death):.3f} s | {max(death):.3f} s | "
        f"{len(death)} |",
        f"| YAML tag edit to the master | {median(edit):.3f} s | {max(edit):.3f} s | {len(edit)} |",
        f"| master restarted on an empty store: all {restart['sidecars']} sidecars' services"
        f" back (resync {restart['resync']}), from the new master's start | "
        f"{restart['from_start_s']:.2f} s | - | 1 |",
        f"| ... from the old master's stop ({restart['restart_gap_s']:.2f} s down) | "
        f"{restart['from_stop_s']:.2f} s | - | 1 |",
    ]


def plots(fresh: Result, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    if not fresh.get("death_to_critical_s"):
        return []
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(fresh["death_to_critical_s"], [1] * len(fresh["death_to_critical_s"]), "o")
    ax.plot(fresh["tag_edit_s"], [0] * len(fresh["tag_edit_s"]), "o")
    ax.plot([2.0], [1], "r|", markersize=30)
    ax.plot([1.0], [0], "r|", markersize=30)
    ax.set_yticks([0, 1], ["tag edit", "death to\ncritical"])
    ax.set_xlabel("seconds (red: target)")
    ax.set_ylim(-0.5, 1.5)
    ax.set_title("4. Freshness, each round")
    fig.tight_layout()
    fig.savefig(out / "freshness.png", dpi=110)
    plt.close(fig)
    return ["freshness.png"]


CASE = Case(
    name="freshness",
    order=40,
    run=run,
    checks=checks,
    section=section,
    headline=headline,
    plots=plots,
)
