"""2. Lookup, driven by wrk: the full list at 10,000 services, then tag lookups at 30,000.

One master on sqlite:/// (reads never touch the store) and the hello ceiling, side by side
in the same run. The services are PUT by the Python load generator (ids svc-0, svc-1, ...,
tag grp-K on services K, K + 1000, ...):

1. `list_services` (10,000) registered: `GET /v1/services` under `wrk -t1 -c64`, plain
   and with `Accept-Encoding: gzip` (whether the master gzips is read off one answer
   first, and reported); requests/s and master CPU per request (/proc/PID/stat).
2. `lookup_services` (30,000) registered: `GET /v1/services?tag=grp-K` (30 services match
   each tag; bench/lua/get_tags.lua walks over the 1,000 tags), the same GETs sent to the
   hello ceiling in turn; the ratio of the two rates.

Before wrk, one answer of each query is checked (status 200, the right number of
services): a fast wrong answer is an error, not speed. wrk's answers >= 400 and socket
errors are errors too (bench/wrk.py). Then the Python cross-check (bench/loadgen.py, 64
concurrent, the list by 8): the `(info)` rows; and a blocking query woken by a change: 64
watchers park on `?index=N`, one PUT changes a service, each watcher's wait from the PUT to
its answer is timed (in this process).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import wrk
from bench.cases import Case, Result, Row, dec, get, goal, info, num, ratio
from bench.common import (
    Proc,
    Procs,
    checked_loadgen,
    describe,
    loadgen,
    log,
    median,
    percentile,
    summarize_loadgen,
)
from bench.modes import Mode
from bench.workloads import GROUPS, registration

LIST_CONCURRENCY = 8  # the Python cross-check of the full list
LIST_TIMEOUT_S = 10.0  # wrk's per-request timeout for the full list (default 2 s)
WATCHERS = 64
GZIP = "Accept-Encoding: gzip"
LIST_BASELINE_RPS = 124.0
LIST_BASELINE_CPU_MS = 8.0


async def run(mode: Mode, logs: Path) -> Result:
    with Procs(logs) as procs:
        hello_proc, hello_port = await procs.helper("hello")
        hello = f"http://127.0.0.1:{hello_port}"
        master_proc, master = await procs.master(
            store=f"sqlite:///{logs}/lookup-store/registry.db", name="lookup-master"
        )
        loops = {"hello": hello_proc.event_loop(), "master": master_proc.event_loop()}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await fill(master, 0, mode.list_services)
            listing = await check_list(session, master, mode.list_services)
            runs = await wrk_rounds(
                mode,
                logs,
                [
                    ("list", master_proc, master, _list_run()),
                    ("list_gzip", master_proc, master, _list_run(GZIP)),
                ],
            )
            python = await python_rounds(
                mode,
                [
                    (
                        "list",
                        master_proc,
                        master,
                        {"kind": "list", "n": mode.list_n},
                        LIST_CONCURRENCY,
                    )
                ],
            )
            await fill(master, mode.list_services, mode.lookup_services - mode.list_services)
            matches = await check_tags(session, master, hello, mode.lookup_services)
            runs |= await wrk_rounds(
                mode,
                logs,
                [
                    ("hello", hello_proc, hello, _tag_run()),
                    ("tag", master_proc, master, _tag_run()),
                ],
            )
            tag = {"kind": "tag", "n": mode.lookup_n}
            by_id = {"kind": "id", "n": mode.lookup_n, "services": mode.lookup_services}
            python |= await python_rounds(
                mode,
                [
                    ("hello", hello_proc, hello, tag, wrk.CONNECTIONS),
                    ("tag", master_proc, master, tag, wrk.CONNECTIONS),
                    ("id", master_proc, master, by_id, wrk.CONNECTIONS),
                ],
            )
            wake = await blocking_wake(session, master, mode.wake_rounds)
    log(f"lookup wake: p50 {wake['p50_ms']:.1f} ms p99 {wake['p99_ms']:.1f} ms")
    return {
        "list_services": mode.list_services,
        "services": mode.lookup_services,
        "tag_matches": matches,
        "listing": listing,
        "event_loops": loops,
        "seconds": mode.wrk_seconds,
        "connections": wrk.CONNECTIONS,
        "repeats": mode.repeats,
        "queries": {name: wrk.summarize(results) for name, results in runs.items()},
        "python": {name: summarize_loadgen(results) for name, results in python.items()},
        "blocking": wake,
    }


def _list_run(*headers: str) -> dict[str, Any]:
    return {"path": "/v1/services", "headers": headers, "timeout_s": LIST_TIMEOUT_S}


def _tag_run() -> dict[str, Any]:
    return {"script": wrk.GET_TAGS, "args": [str(GROUPS)]}


async def fill(master: str, first: int, count: int) -> None:
    """PUT services svc-FIRST ... through the API; every one must be answered 2xx."""
    if count <= 0:
        return
    filled = await loadgen(
        {
            "base": master,
            "concurrency": wrk.CONNECTIONS,
            "max_seconds": 300,
            "requests": {"kind": "register", "first": first, "n": count, "interval": "1h"},
        }
    )
    if filled["ok"] != count:
        raise RuntimeError(f"registered only {filled['ok']} of {count}: {filled}")


async def check_list(session: aiohttp.ClientSession, master: str, count: int) -> dict[str, Any]:
    """One full list, plain and asking for gzip: all `count` services; gzipped or not."""
    async with session.get(f"{master}/v1/services") as answer:
        answer.raise_for_status()
        plain = await answer.read()
        services = len((await answer.json(content_type=None))["services"])
    if services != count:
        raise RuntimeError(f"the full list holds {services} services, not {count}")
    async with session.get(
        f"{master}/v1/services", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    ) as answer:
        answer.raise_for_status()
        encoding = answer.headers.get("Content-Encoding", "identity")
        wire = len(await answer.read())
    log(
        f"lookup list: {services:,} services, {len(plain):,} bytes; asked for gzip: "
        f"{encoding}, {wire:,} bytes"
    )
    return {
        "services": services,
        "bytes": len(plain),
        "gzip_encoding": encoding,
        "gzip_bytes": wire,
    }


async def check_tags(session: aiohttp.ClientSession, master: str, hello: str, services: int) -> int:
    """Every tag the wrk script asks for holds services / GROUPS services; hello answers."""
    expected = services // GROUPS
    for k in (0, 7, GROUPS - 1):
        async with session.get(f"{master}/v1/services?tag=grp-{k}") as answer:
            answer.raise_for_status()
            found = len((await answer.json(content_type=None))["services"])
        if found != expected:
            raise RuntimeError(f"tag grp-{k} matches {found} services, not {expected}")
    async with session.get(f"{hello}/v1/services?tag=grp-7") as answer:
        answer.raise_for_status()
    return expected


async def wrk_rounds(
    mode: Mode, logs: Path, plan: list[tuple[str, Proc, str, dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Each query of `plan` under wrk in turn, `mode.repeats` times."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
    for repeat in range(mode.repeats):
        for name, server, base, how in plan:
            try:
                result = await wrk.run(
                    base + how.get("path", ""),
                    seconds=mode.wrk_seconds,
                    server=server,
                    script=how.get("script"),
                    args=how.get("args", ()),
                    headers=how.get("headers", ()),
                    timeout_s=how.get("timeout_s"),
                    log_path=logs / f"wrk-lookup-{name}.log",
                )
            except Exception as exc:  # wrk failed, or the server is gone
                result = wrk.failed(exc)
            if not server.alive():
                result["problems"].append(f"the server exited ({server.proc.returncode})")
            runs[name].append(result)
            log(f"lookup {name:<9} #{repeat + 1}: {describe(result)}")
    return runs


async def python_rounds(
    mode: Mode, plan: list[tuple[str, Proc, str, dict[str, Any], int]]
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
    for repeat in range(mode.py_repeats):
        for name, server, base, requests, concurrency in plan:
            result = await checked_loadgen(
                {"base": base, "concurrency": concurrency, "max_seconds": 60, "requests": requests},
                server,
            )
            runs[name].append(result)
            log(f"lookup (python) {name:<6} #{repeat + 1}: {describe(result)}")
    return runs


# --- the blocking query ----------------------------------------------------------------


async def blocking_wake(session: aiohttp.ClientSession, master: str, rounds: int) -> dict[str, Any]:
    """`WATCHERS` blocking queries parked on the index; one PUT; how long until each answers.

    A health check may move the index on its own (a first result changes a status); a
    watcher answered before the PUT was sent parks again on the new index.
    """
    waits: list[float] = []
    round_times: list[float] = []
    for k in range(rounds):
        index = await _index(session, master)
        url = f"{master}/v1/services?tag=grp-{k % GROUPS}&wait=30s&index="
        sent: list[float] = []
        woke: list[float] = []
        watchers = [
            asyncio.create_task(_watch(session, url, index, sent, woke)) for _ in range(WATCHERS)
        ]
        await asyncio.sleep(0.5)  # let every one of them park at the master
        body = registration(1, "http://127.0.0.1:9/health", "1h")
        body["meta"]["round"] = str(k)
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


# --- the report ------------------------------------------------------------------------


def _problems(result: Result, group: str, *names: str) -> list[str]:
    found = []
    for name in names:
        t = get(result, group, name)
        if not t:
            found.append(f"{name} not measured")
        else:
            found += [f"{name}: {p}" for p in t["problems"]]
    return found


def goals(result: Result) -> list[Row]:
    q, py = result.get("queries") or {}, result.get("python") or {}
    matches = result.get("tag_matches")
    services = result.get("services") or 0
    loops = result.get("event_loops") or {}
    loop_problems = (
        [f"hello ran on {loops['hello']}, the master on {loops['master']}"]
        if loops and loops.get("hello") != loops.get("master")
        else []
    )
    tag_target = f"GET /v1/services?tag=X ({matches} of {services:,} match) vs hello"
    rows = [
        goal(
            tag_target,
            f"{num(get(q, 'tag', 'rps'))}/s vs {num(get(q, 'hello', 'rps'))}/s",
            get(q, "tag", "rps"),
            get(q, "hello", "rps"),
            baseline="0.59x",
            need=0.85,
            at_least=True,
            problems=_problems(result, "queries", "tag", "hello") + loop_problems,
        ),
        info(
            "... the same, Python client",
            f"{num(get(py, 'tag', 'rps'))}/s vs {num(get(py, 'hello', 'rps'))}/s",
            get(py, "tag", "rps"),
            get(py, "hello", "rps"),
            _problems(result, "python", "tag", "hello"),
        ),
    ]
    listed = result.get("list_services") or 0
    rps = get(q, "list", "rps")
    rows.append(
        goal(
            f"Full list at {listed:,} services (GET /v1/services): requests/s, vs the baseline",
            f"{dec(rps, 1)}/s",
            rps,
            LIST_BASELINE_RPS,
            baseline=f"{LIST_BASELINE_RPS:g}/s",
            need=10,
            at_least=True,
            need_text=f">= 10x ({10 * LIST_BASELINE_RPS:,.0f}/s)",
            problems=_problems(result, "queries", "list"),
        )
    )
    cpu = get(q, "list", "server_cpu_us")
    cpu_ms = None if cpu is None else cpu / 1000
    rows.append(
        goal(
            "... master CPU per full list, vs the baseline",
            f"{dec(cpu_ms, 2)} ms",
            cpu_ms,
            LIST_BASELINE_CPU_MS,
            baseline=f"{LIST_BASELINE_CPU_MS:g} ms",
            need=0.1,
            at_least=False,
            need_text=f"<= 0.1x ({LIST_BASELINE_CPU_MS / 10:g} ms)",
            problems=_problems(result, "queries", "list"),
        )
    )
    gz = get(q, "list_gzip") or {}
    listing = result.get("listing") or {}
    gz_cpu = gz.get("server_cpu_us")
    rows.append(
        info(
            f"... the full list with `{GZIP}` (answered {listing.get('gzip_encoding', '-')}, "
            f"{num(listing.get('gzip_bytes'))} bytes)",
            f"{dec(gz.get('rps'), 1)}/s, {dec(_ms(gz_cpu), 2)} ms CPU",
            gz.get("rps"),
            LIST_BASELINE_RPS,
            _problems(result, "queries", "list_gzip"),
        )
    )
    py_list = get(py, "list", "rps")
    rows.append(
        info(
            f"... the full list, Python client ({get(py, 'list', 'concurrency') or '-'} "
            "concurrent)",
            f"{dec(py_list, 1)}/s, {dec(_ms(get(py, 'list', 'server_cpu_us')), 2)} ms CPU",
            py_list,
            LIST_BASELINE_RPS,
            _problems(result, "python", "list"),
        )
    )
    return rows


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def headline(result: Result) -> dict[str, Any]:
    q, py = result.get("queries") or {}, result.get("python") or {}
    return {
        "hello_get_rps": get(q, "hello", "rps"),
        "tag_lookup_rps": get(q, "tag", "rps"),
        "tag_lookup_vs_hello": ratio(get(q, "tag", "rps"), get(q, "hello", "rps")),
        "tag_lookup_p50_ms": get(q, "tag", "p50_ms"),
        "tag_lookup_p99_ms": get(q, "tag", "p99_ms"),
        "hello_get_server_cpu_us": get(q, "hello", "server_cpu_us"),
        "tag_lookup_server_cpu_us": get(q, "tag", "server_cpu_us"),
        "list_rps": get(q, "list", "rps"),
        "list_server_cpu_us": get(q, "list", "server_cpu_us"),
        "list_gzip_rps": get(q, "list_gzip", "rps"),
        "list_gzip_server_cpu_us": get(q, "list_gzip", "server_cpu_us"),
        "list_p99_ms": get(q, "list", "p99_ms"),
        "python_hello_get_rps": get(py, "hello", "rps"),
        "python_tag_lookup_rps": get(py, "tag", "rps"),
        "python_id_lookup_rps": get(py, "id", "rps"),
        "python_list_rps": get(py, "list", "rps"),
        "blocking_wake_p50_ms": get(result, "blocking", "p50_ms"),
        "blocking_wake_p99_ms": get(result, "blocking", "p99_ms"),
    }


def section(result: Result) -> list[str]:
    q = result["queries"]
    listing = result["listing"]
    loops = result.get("event_loops") or {}
    labels = {
        "list": f"`/v1/services` (all {result['list_services']:,}, {listing['bytes']:,} bytes)",
        "list_gzip": f"... with `{GZIP}` (answered {listing['gzip_encoding']}, "
        f"{listing['gzip_bytes']:,} bytes)",
        "hello": f"hello ceiling, the same tag GETs ({loops.get('hello', '-')})",
        "tag": f"`?tag=grp-K` ({result['tag_matches']} of {result['services']:,} match; "
        f"master on {loops.get('master', '-')})",
    }
    hello = get(q, "hello", "rps")
    lines = [
        "",
        f"## 2. Lookup (`wrk -t1 -c{result['connections']} -d{result['seconds']:g}s`, one "
        f"master on sqlite:///, median of {result['repeats']})",
        "",
        "| query | req/s | runs | vs hello | p50 ms | p99 ms | wrk CPU | server CPU |"
        " server us/req | problems |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("hello", "tag", "list", "list_gzip"):
        t = q.get(name)
        if not t:
            continue
        share = ratio(t["rps"], hello) if name in ("hello", "tag") else None
        runs = ", ".join(num(r) for r in t["rps_runs"])
        lines.append(
            f"| {labels[name]} | {dec(t['rps'], 0)} | {runs} | "
            f"{'-' if share is None else f'{share:.2f}x'} | {dec(t['p50_ms'], 2)} | "
            f"{dec(t['p99_ms'], 2)} | {dec(t['client_cpu_pct'], 0)} % | "
            f"{dec(t['server_cpu_pct'], 0)} % | {dec(t['server_cpu_us'], 0)} | "
            f"{'; '.join(t['problems']) or '-'} |"
        )
    py = result.get("python") or {}
    if py:
        py_labels = {
            "hello": "hello ceiling (tag GETs)",
            "tag": "`?tag=grp-K`",
            "id": "`/v1/services/{id}`",
            "list": f"`/v1/services` (all {result['list_services']:,})",
        }
        lines += [
            "",
            "Python-client cross-check (bench/loadgen.py):",
            "",
            "| query | req/s | vs hello | p50 ms | p99 ms | concurrency | client CPU |"
            " server us/req | problems |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        py_hello = get(py, "hello", "rps")
        for name, t in py.items():
            share = ratio(t["rps"], py_hello) if name != "list" else None
            lines.append(
                f"| {py_labels.get(name, name)} | {dec(t['rps'], 0)} | "
                f"{'-' if share is None else f'{share:.2f}x'} | {dec(t['p50_ms'], 2)} | "
                f"{dec(t['p99_ms'], 2)} | {t['concurrency']} | {dec(t['client_cpu_pct'], 0)} % | "
                f"{dec(t['server_cpu_us'], 0)} | {'; '.join(t['problems']) or '-'} |"
            )
    b = result["blocking"]
    lines += [
        "",
        f"Blocking query woken by a change: {b['watchers']} watchers x {b['rounds']} rounds; "
        f"from the PUT to each answer p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms "
        f"(max {b['max_ms']:.1f} ms); {b['answers_per_s']:,.0f} answers/s.",
    ]
    return lines


def plots(result: Result, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    q = result.get("queries") or {}
    if not q:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    names = [k for k in ("hello", "tag", "list", "list_gzip") if k in q]
    left.bar(names, [q[k]["rps"] or 0 for k in names], color="#59a14f")
    left.set_ylabel("requests per second (wrk)")
    left.set_yscale("log")
    right.bar(names, [q[k]["server_cpu_us"] or 0 for k in names], color="#e15759")
    right.set_ylabel("server CPU per request, us")
    right.set_yscale("log")
    fig.suptitle(
        f"2. Lookup: tags at {result['services']:,}, full list at {result['list_services']:,}"
    )
    fig.tight_layout()
    fig.savefig(out / "lookup.png", dpi=110)
    plt.close(fig)
    return ["lookup.png"]


CASE = Case(
    name="lookup",
    order=20,
    run=run,
    goals=goals,
    section=section,
    headline=headline,
    plots=plots,
)
