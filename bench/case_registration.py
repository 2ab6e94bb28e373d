"""1. Registration: PUT /v1/services/{id}, every request a new id, driven by wrk.

`wrk -t1 -c64 -d<wrk_seconds>s --latency -s bench/lua/put_services.lua`, each target a
fresh server, the targets measured in turn within each repeat (drift on a shared machine
hits all alike), medians over the repeats:

- `hello`: the hello ceiling (bench/hello.py, on the master's own event loop), sent the
  very same PUTs;
- `sqlite`, `memory`: our master on sqlite:/// and on memory://;
- `picoapi`: the picoapi 1.0.4 master as its services send it: GET /register with the JSON
  body (bench/lua/picoapi_register.lua), a healthcheck 1 h away; it starts a thread per
  registration that checks at once: that is what its registration costs;
- `picoapi_route`: the same route with no healthcheck (no thread): FastAPI on uvicorn with
  uvloop and httptools, the route alone.

A run is an error, not a rate, when wrk saw answers >= 400 or socket errors, when the
registry's count after the run does not match the answers (each PUT a new id: it must grow
by one per answer, plus at most the 64 in flight when wrk stopped), when a service read back
is not the one sent, or when the server does not run the event loop (or parser) it should.
Server CPU per request: /proc/PID/stat over the run (bench/wrk.py).

Then the Python cross-check: the aiohttp load generator (bench/loadgen.py) sends the same
targets `register_n` registrations each: the `(info)` rows.

Another store is one more `Target` (`master_target("etcd", ..., store=...)`) measured by
`measure()` next to `sqlite` from a case of its own; `beside` names other processes (the
etcd the master writes to) whose CPU over each wrk run is reported per request too.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
    log,
    mid,
    summarize_loadgen,
)
from bench.modes import Mode
from bench.workloads import registration

PICOAPI_INTERVAL = 3600  # seconds: as our 1 h; each thread still checks once at start
COUNT_SETTLE_S = 3.0
REQUEST_TIMEOUT_S = 10.0  # wrk's, per request (its default, 2 s, is below picoapi's p99)

Start = Callable[[Procs, Path], Awaitable[tuple[Proc, str]]]
Count = Callable[[aiohttp.ClientSession, str], Awaitable[int]]
Sample = Callable[[aiohttp.ClientSession, str, str], Awaitable[list[str]]]


@dataclass(frozen=True)
class Target:
    """One server to register with: how to start it, what to send, how to check it."""

    name: str
    label: str
    start: Start  # (procs, a fresh directory) -> (the server's Proc, its base URL)
    script: Path
    script_args: tuple[str, ...]  # after the run's id prefix
    count: Count | None = None  # how many services it holds
    sample: Sample | None = None  # problems with what it holds, given the run's prefix
    loadgen: dict[str, Any] | None = None  # the Python cross-check's requests
    loadgen_seconds: float = 120.0
    kill: bool = False  # SIGKILL at the end: it does not exit on SIGTERM in time
    libraries: tuple[str, ...] = ()  # shared objects it must have loaded
    # other processes' CPU over the run, per request: (name, its CPU seconds so far)
    beside: tuple[tuple[str, Callable[[], float]], ...] = ()


async def master_count(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/healthz") as answer:
        answer.raise_for_status()
        return int((await answer.json())["services"])


async def picoapi_count(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/services/status") as answer:
        answer.raise_for_status()
        return len(await answer.json())


async def master_sample(session: aiohttp.ClientSession, url: str, prefix: str) -> list[str]:
    """A service of the run read back: what put_services.lua sent for N = 2. (wrk calls
    request() once before the run to inspect it and drops that request: N = 1 is never
    sent; N = 2 is the first that is.)"""
    ident = f"{prefix}-1-2"
    sent = registration(2, "http://127.0.0.1:9/health")
    async with session.get(f"{url}/v1/services/{ident}") as answer:
        if answer.status != 200:
            return [f"GET /v1/services/{ident} answered {answer.status}"]
        body = await answer.json(content_type=None)
    if not isinstance(body, dict) or body.get("id") != ident:
        return [f"GET /v1/services/{ident} is not that service: {str(body)[:200]}"]
    keys = ("name", "address", "port", "scheme", "tags", "meta")
    wrong = [key for key in keys if body.get(key) != sent[key]]
    if (body.get("check") or {}).get("url") != sent["check"]["url"]:
        wrong.append("check.url")
    return [f"{ident} read back differs in {', '.join(wrong)}"] if wrong else []


def hello_target() -> Target:
    async def start(procs: Procs, workdir: Path) -> tuple[Proc, str]:
        hello, port = await procs.helper("hello")
        return hello, f"http://127.0.0.1:{port}"

    return Target(
        "hello",
        "hello ceiling (aiohttp, same event loop)",
        start,
        wrk.PUT_SERVICES,
        ("1h",),
        loadgen={"kind": "register", "interval": "1h"},
    )


def master_target(
    name: str,
    label: str,
    store: Callable[[Path], str],
    beside: tuple[tuple[str, Callable[[], float]], ...] = (),
) -> Target:
    """Our master on the store `store(workdir)` names (sqlite:///..., memory://, ...)."""

    async def start(procs: Procs, workdir: Path) -> tuple[Proc, str]:
        return await procs.master(store=store(workdir), name=f"master-{name}")

    return Target(
        name,
        label,
        start,
        wrk.PUT_SERVICES,
        ("1h",),
        count=master_count,
        sample=master_sample,
        loadgen={"kind": "register", "interval": "1h"},
        beside=beside,
    )


def picoapi_target(name: str, label: str, interval: int | None) -> Target:
    async def start(procs: Procs, workdir: Path) -> tuple[Proc, str]:
        return await procs.picoapi_master(name=name)

    if interval is None:
        requests: dict[str, Any] = {"kind": "picoapi", "no_healthcheck": True}
        seconds = 120.0
    else:
        requests = {"kind": "picoapi", "picoapi_interval": interval}
        seconds = 0.0  # the mode's cap
    return Target(
        name,
        label,
        start,
        wrk.PICOAPI_REGISTER,
        ("none" if interval is None else str(interval),),
        count=picoapi_count,
        loadgen=requests,
        loadgen_seconds=seconds,
        kill=True,  # its checker threads are not daemons: on SIGTERM it would linger
        libraries=("uvloop", "httptools"),
    )


def targets() -> list[Target]:
    return [
        hello_target(),
        master_target("sqlite", "ours, sqlite:///", lambda d: f"sqlite:///{d}/registry.db"),
        master_target("memory", "ours, memory://", lambda d: "memory://"),
        picoapi_target("picoapi", "picoapi 1.0.4 (as its services send)", PICOAPI_INTERVAL),
        picoapi_target("picoapi_route", "picoapi 1.0.4 (route only)", None),
    ]


# --- measuring -------------------------------------------------------------------------


async def run(mode: Mode, logs: Path) -> Result:
    return await measure(mode, logs, targets())


async def measure(mode: Mode, logs: Path, chosen: list[Target]) -> Result:
    """wrk on every target in turn, `mode.repeats` times; then the Python cross-check."""
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in chosen}
    for repeat in range(mode.repeats):
        for target in chosen:
            try:
                result = await wrk_once(target, mode, logs, f"{repeat}")
            except Exception as exc:  # one target that cannot run must not hide the others
                result = {**wrk.failed(exc), "event_loop": "-"}
            runs[target.name].append(result)
            log(
                f"registration {target.name:<13} #{repeat + 1}: {describe(result)} "
                f"[{result['event_loop']}]"
            )
    python: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(mode.py_repeats):
        for target in chosen:
            if target.loadgen is not None:
                result = await python_once(target, mode, logs, f"py{repeat}")
                python.setdefault(target.name, []).append(result)
                log(f"registration (python) {target.name:<13} #{repeat + 1}: {describe(result)}")
    return {
        "seconds": mode.wrk_seconds,
        "connections": wrk.CONNECTIONS,
        "repeats": mode.repeats,
        "labels": {t.name: t.label for t in chosen},
        "targets": {name: _summary(results) for name, results in runs.items()},
        "python": {name: summarize_loadgen(results) for name, results in python.items()},
        "python_services": mode.register_n,
        "runs": runs,
    }


async def wrk_once(target: Target, mode: Mode, logs: Path, tag: str) -> dict[str, Any]:
    workdir = logs / f"store-{target.name}-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with Procs(logs) as procs:
            server, url = await target.start(procs, workdir)
            try:
                return await _measured(target, server, url, mode, logs)
            finally:
                if target.kill:
                    server.kill()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _measured(
    target: Target, server: Proc, url: str, mode: Mode, logs: Path
) -> dict[str, Any]:
    prefix = wrk.run_prefix()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        before = await target.count(session, url) if target.count else None
        beside_before = {name: cpu() for name, cpu in target.beside}
        result = await wrk.run(
            url,
            seconds=mode.wrk_seconds,
            server=server,
            script=target.script,
            args=[prefix, *target.script_args],
            timeout_s=REQUEST_TIMEOUT_S,
            log_path=logs / f"wrk-registration-{target.name}.log",
        )
        if target.beside:
            result["beside_cpu_us"] = {
                name: 1e6 * (cpu() - beside_before[name]) / max(result["requests"], 1)
                for name, cpu in target.beside
            }
        problems: list[str] = result["problems"]
        if not server.alive():
            problems.append(f"the server exited ({server.proc.returncode})")
            result.update(event_loop="-", libraries={})
            return result
        result["event_loop"] = server.event_loop()
        result["libraries"] = {lib: server.has_loaded(lib) for lib in target.libraries}
        problems += [f"{lib} not loaded" for lib, on in result["libraries"].items() if not on]
        try:
            if target.count is not None and before is not None:
                result["registered"] = added = await _settled(target.count, session, url) - before
                answered = result["answered"]
                if not answered <= added <= answered + wrk.CONNECTIONS:
                    problems.append(f"{answered:,} answered but {added:,} services added")
            if target.sample is not None:
                problems += await target.sample(session, url, prefix)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            problems.append(f"could not read the registry back: {type(exc).__name__}: {exc}")
    return result


async def _settled(count: Count, session: aiohttp.ClientSession, url: str) -> int:
    """The count once requests still in flight when wrk stopped are done (bounded)."""
    last = await count(session, url)
    for _ in range(int(COUNT_SETTLE_S / 0.2)):
        await asyncio.sleep(0.2)
        now = await count(session, url)
        if now == last:
            return now
        last = now
    return last


async def python_once(target: Target, mode: Mode, logs: Path, tag: str) -> dict[str, Any]:
    assert target.loadgen is not None
    workdir = logs / f"store-{target.name}-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with Procs(logs) as procs:
            try:
                server, url = await target.start(procs, workdir)
            except Exception as exc:
                return {**wrk.failed(exc), "ok": 0, "truncated": False}
            try:
                return await checked_loadgen(
                    {
                        "base": url,
                        "concurrency": wrk.CONNECTIONS,
                        "max_seconds": target.loadgen_seconds or mode.picoapi_register_seconds,
                        "requests": {**target.loadgen, "n": mode.register_n},
                    },
                    server,
                )
            finally:
                if target.kill:
                    server.kill()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary = wrk.summarize(results)
    summary["event_loop"] = "/".join(sorted({r["event_loop"] for r in results}))
    summary["registered"] = [r.get("registered") for r in results]
    beside = sorted({name for r in results for name in r.get("beside_cpu_us") or {}})
    if beside:
        summary["beside_cpu_us"] = {
            name: mid(({"v": (r.get("beside_cpu_us") or {}).get(name)} for r in results), "v")
            for name in beside
        }
    return summary


# --- the report ------------------------------------------------------------------------


def _rate(result: Result, group: str, name: str) -> tuple[float | None, list[str]]:
    t = get(result, group, name) or {}
    return t.get("rps"), list(t.get("problems") or ([] if t else [f"{name} not measured"]))


def _cpu(result: Result, group: str, name: str) -> float | None:
    value: float | None = get(result, group, name, "server_cpu_us")
    return value


def _loop_problems(result: Result, name: str) -> list[str]:
    hello = get(result, "targets", "hello", "event_loop")
    ours = get(result, "targets", name, "event_loop")
    if hello and ours and hello != ours:
        return [f"hello ran on {hello}, {name} on {ours}: not the same event loop"]
    return []


def vs(
    result: Result,
    group: str,
    name: str,
    reference: str,
    target: str,
    baseline: str,
    need: float,
) -> Row:
    """A rate goal (wrk) or its cross-check (python): `name`'s rate over `reference`'s."""
    value, problems = _rate(result, group, name)
    ref, ref_problems = _rate(result, group, reference)
    measured = f"{num(value)}/s vs {num(ref)}/s"
    everything = [f"{name}: {p}" for p in problems] + [f"{reference}: {p}" for p in ref_problems]
    if group == "python":
        return info("... the same, Python client", measured, value, ref, everything)
    if reference == "hello":
        everything += _loop_problems(result, name)
    return goal(
        target,
        measured,
        value,
        ref,
        baseline=baseline,
        need=need,
        at_least=True,
        problems=everything,
    )


def cpu_row(result: Result, group: str, name: str, baseline: str, need: float) -> Row:
    ours, hello = _cpu(result, group, name), _cpu(result, group, "hello")
    _, problems = _rate(result, group, name)
    _, hello_problems = _rate(result, group, "hello")
    everything = [f"{name}: {p}" for p in problems] + [f"hello: {p}" for p in hello_problems]
    measured = f"{dec(ours, 0)} us vs {dec(hello, 0)} us"
    target = f"Master CPU per PUT ({name}) vs hello's CPU per request"
    if group == "python":
        return info("... the same, Python client", measured, ours, hello, everything)
    return goal(
        target,
        measured,
        ours,
        hello,
        baseline=baseline,
        need=need,
        at_least=False,
        problems=everything + _loop_problems(result, name),
    )


def goals(result: Result) -> list[Row]:
    rows: list[Row] = []
    for group in ("targets", "python"):
        rows += [
            vs(
                result,
                group,
                "sqlite",
                "hello",
                "PUT /v1/services/{id}, distinct ids, sqlite:/// vs hello",
                "0.28x",
                0.6,
            ),
            vs(
                result, group, "memory", "hello", "... the same on memory:// vs hello", "0.35x", 0.7
            ),
            cpu_row(result, group, "sqlite", "3.7x", 1.7),
            vs(
                result,
                group,
                "sqlite",
                "picoapi",
                "Registration (sqlite:///) vs the picoapi 1.0.4 master as its services send"
                " it (GET /register with a body)",
                "4-6x",
                10,
            ),
            vs(
                result,
                group,
                "sqlite",
                "picoapi_route",
                "Registration (sqlite:///) vs picoapi's bare route (FastAPI, uvloop, httptools,"
                " no health-check thread)",
                "0.45x",
                1.0,
            ),
        ]
    wrk_rows, python_rows = rows[:5], rows[5:]
    return [row for pair in zip(wrk_rows, python_rows, strict=True) for row in pair]


def headline(result: Result) -> dict[str, Any]:
    t = result.get("targets") or {}
    py = result.get("python") or {}
    return {
        "hello_put_rps": get(t, "hello", "rps"),
        "registration_rps_sqlite": get(t, "sqlite", "rps"),
        "registration_rps_memory": get(t, "memory", "rps"),
        "registration_rps_picoapi": get(t, "picoapi", "rps"),
        "registration_rps_picoapi_route_only": get(t, "picoapi_route", "rps"),
        "hello_put_server_cpu_us": get(t, "hello", "server_cpu_us"),
        "registration_sqlite_server_cpu_us": get(t, "sqlite", "server_cpu_us"),
        "registration_memory_server_cpu_us": get(t, "memory", "server_cpu_us"),
        "registration_sqlite_vs_hello": ratio(get(t, "sqlite", "rps"), get(t, "hello", "rps")),
        "python_hello_put_rps": get(py, "hello", "rps"),
        "python_registration_rps_sqlite": get(py, "sqlite", "rps"),
    }


def targets_table(result: Result) -> list[str]:
    """The wrk rows of a registration result: usable by any case built on `measure()`."""
    labels = result.get("labels") or {}
    lines = [
        "| server | PUT/s | runs | vs hello | p50 ms | p99 ms | wrk CPU | server CPU |"
        " server us/PUT | loop | problems |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    hello = get(result, "targets", "hello", "rps")
    for name, t in result["targets"].items():
        share = ratio(t["rps"], hello)
        runs = ", ".join(num(r) for r in t["rps_runs"])
        lines.append(
            f"| {labels.get(name, name)} | {num(t['rps'])} | {runs} | "
            f"{'-' if share is None else f'{share:.2f}x'} | {dec(t['p50_ms'], 2)} | "
            f"{dec(t['p99_ms'], 2)} | {dec(t['client_cpu_pct'], 0)} % | "
            f"{dec(t['server_cpu_pct'], 0)} % | {dec(t['server_cpu_us'], 0)} | "
            f"{t.get('event_loop', '-')} | {'; '.join(t['problems']) or '-'} |"
        )
    return lines


def section(result: Result) -> list[str]:
    labels = result.get("labels") or {}
    lines = [
        "",
        f"## 1. Registration (`wrk -t1 -c{result['connections']} -d{result['seconds']:g}s`, "
        f"each PUT a new id, a fresh server each run, median of {result['repeats']})",
        "",
        *targets_table(result),
    ]
    python = result.get("python") or {}
    if python:
        hello = get(python, "hello", "rps")
        lines += [
            "",
            f"Python-client cross-check ({result['python_services']:,} registrations, 64 "
            "concurrent, bench/loadgen.py):",
            "",
            "| server | PUT/s | vs hello | p50 ms | p99 ms | client CPU | server us/PUT |"
            " problems |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, t in python.items():
            share = ratio(t["rps"], hello)
            note = " (stopped at the time cap)" if t["truncated"] else ""
            lines.append(
                f"| {labels.get(name, name)}{note} | {num(t['rps'])} | "
                f"{'-' if share is None else f'{share:.2f}x'} | {dec(t['p50_ms'], 1)} | "
                f"{dec(t['p99_ms'], 1)} | {dec(t['client_cpu_pct'], 0)} % | "
                f"{dec(t['server_cpu_us'], 0)} | {'; '.join(t['problems']) or '-'} |"
            )
    return lines


def plots(result: Result, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    t = result.get("targets") or {}
    if not t:
        return []
    labels = result.get("labels") or {}
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(t)
    ax.bar(range(len(names)), [t[k]["rps"] or 0 for k in names], color="#4c78a8")
    for i, k in enumerate(names):
        dots = [r for r in t[k]["rps_runs"] if r is not None]
        ax.plot([i] * len(dots), dots, "k.", alpha=0.6)
    short = [labels.get(k, k).replace(" (", "\num(").replace(", ", "\n") for k in names]
    ax.set_xticks(range(len(names)), short, fontsize=7)
    ax.set_ylabel("registrations per second (median; dots: runs)")
    ax.set_title(f"1. Registration, wrk -t1 -c{result['connections']}")
    fig.tight_layout()
    fig.savefig(out / "registration.png", dpi=110)
    plt.close(fig)
    return ["registration.png"]


CASE = Case(
    name="registration",
    order=10,
    run=run,
    goals=goals,
    section=section,
    headline=headline,
    plots=plots,
)
