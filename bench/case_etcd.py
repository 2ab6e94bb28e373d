"""7. Registration through one master on etcd, next to SQLite, in the same run.

The registration case's method (bench/case_registration.py, its `measure()`), on two
targets measured in turn within each repeat, a fresh master each run:

- `sqlite`: our master on sqlite:/// (a fresh file), as in case 1;
- `etcd`: our master on `etcd://127.0.0.1:PORT/PREFIX`, a one-member etcd 3.4 this case
  starts on loopback (bench/etcd_server.py: temporary data directory, the test fixture's
  flags, each commit fsynced), a fresh prefix per run so every master starts empty.

`wrk -t1 -c64 -d<secs> --latency -s bench/lua/put_services.lua`, each PUT a new id: PUT/s,
p50/p99, the master's CPU per PUT (/proc/PID/stat over the run), and for the etcd target
etcd's own CPU per PUT (its /proc/PID/stat over the same run). The checks of case 1 hold:
answers >= 400 or socket errors, a registry count that does not grow by one per answer, a
service read back that is not the one sent, all make the run an error. Then the Python
cross-check (bench/loadgen.py), the `(info)` rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import aiohttp

from bench.case_registration import master_target, measure
from bench.cases import Case, Result, Row, dec, get, info, num, ratio
from bench.etcd_server import disk_figures, running
from bench.modes import Mode

PYTHON_N = 3_000


async def run(mode: Mode, logs: Path) -> Result:
    async with running(logs) as etcd, aiohttp.ClientSession() as session:
        beside = (("etcd", etcd.cpu_seconds),)
        disk_before = await etcd.metrics(session)
        revision_before = await etcd.revision(session)
        result = await measure(
            # The Python cross-check at most PYTHON_N registrations: etcd takes them at a
            # few hundred a second on this machine's disk.
            dataclasses.replace(mode, register_n=min(mode.register_n, PYTHON_N)),
            logs,
            [
                master_target("sqlite", "ours, sqlite:///", lambda d: f"sqlite:///{d}/registry.db"),
                master_target(
                    "etcd",
                    "ours, etcd:// (one member, loopback)",
                    lambda d: etcd.store_url(f"/{d.name}/"),
                    beside=beside,
                ),
            ],
        )
        # What etcd's disk did over every etcd run of the case (wrk's and the Python
        # client's): WAL fsyncs and backend commits, against the writes they carried.
        disk = disk_figures(disk_before, await etcd.metrics(session))
        writes = await etcd.revision(session) - revision_before
        result["etcd"] = {
            "version": etcd.version,
            "disk": etcd.disk(),
            "members": 1,
            "writes": writes,
            **disk,
            "writes_per_fsync": writes / disk["fsyncs"] if disk["fsyncs"] else None,
        }
        return result


# --- the report ------------------------------------------------------------------------


def _problems(result: Result, group: str, *names: str) -> list[str]:
    found = []
    for name in names:
        t = get(result, group, name)
        if not t:
            found.append(f"{name} not measured")
        else:
            found += [f"{name}: {p}" for p in t.get("problems") or []]
    return found


def goals(result: Result) -> list[Row]:
    t = result.get("targets") or {}
    py = result.get("python") or {}
    etcd_cpu = get(t, "etcd", "beside_cpu_us", "etcd")
    return [
        info(
            "Registration on etcd:// (one member) vs sqlite:///, PUT/s",
            f"{num(get(t, 'etcd', 'rps'))}/s vs {num(get(t, 'sqlite', 'rps'))}/s",
            get(t, "etcd", "rps"),
            get(t, "sqlite", "rps"),
            _problems(result, "targets", "etcd", "sqlite"),
        ),
        info(
            "... the same, Python client",
            f"{num(get(py, 'etcd', 'rps'))}/s vs {num(get(py, 'sqlite', 'rps'))}/s",
            get(py, "etcd", "rps"),
            get(py, "sqlite", "rps"),
            _problems(result, "python", "etcd", "sqlite"),
        ),
        info(
            "... master CPU per PUT, etcd:// vs sqlite:///",
            f"{dec(get(t, 'etcd', 'server_cpu_us'), 0)} us vs "
            f"{dec(get(t, 'sqlite', 'server_cpu_us'), 0)} us",
            get(t, "etcd", "server_cpu_us"),
            get(t, "sqlite", "server_cpu_us"),
            _problems(result, "targets", "etcd", "sqlite"),
        ),
        info(
            "... etcd's own CPU per PUT, vs the master's",
            f"{dec(etcd_cpu, 0)} us vs {dec(get(t, 'etcd', 'server_cpu_us'), 0)} us",
            etcd_cpu,
            get(t, "etcd", "server_cpu_us"),
            _problems(result, "targets", "etcd"),
        ),
    ]


def headline(result: Result) -> dict[str, Any]:
    t = result.get("targets") or {}
    return {
        "registration_rps_etcd": get(t, "etcd", "rps"),
        "registration_etcd_vs_sqlite": ratio(get(t, "etcd", "rps"), get(t, "sqlite", "rps")),
        "registration_etcd_server_cpu_us": get(t, "etcd", "server_cpu_us"),
        "registration_etcd_etcd_cpu_us": get(t, "etcd", "beside_cpu_us", "etcd"),
    }


def section(result: Result) -> list[str]:
    labels = result.get("labels") or {}
    about = result.get("etcd") or {}
    lines = [
        "",
        f"## 7. Registration on etcd (`wrk -t1 -c{result['connections']} "
        f"-d{result['seconds']:g}s`, each PUT a new id, a fresh master each run, median of "
        f"{result['repeats']})",
        "",
        f"etcd {about.get('version', '?')}, one member on loopback, data directory on "
        f"{about.get('disk', '?')}, each commit fsynced; a fresh key prefix per run. Over "
        f"all the case's etcd runs: {num(about.get('writes'))} writes (revisions), "
        f"{num(about.get('fsyncs'))} WAL fsyncs (mean {dec(about.get('fsync_mean_ms'), 2)} ms, "
        f"{dec(about.get('writes_per_fsync'), 1)} writes each), "
        f"{num(about.get('commits'))} backend commits (mean "
        f"{dec(about.get('commit_mean_ms'), 2)} ms).",
        "",
        "| server | PUT/s | runs | vs sqlite | p50 ms | p99 ms | wrk CPU | master CPU |"
        " master us/PUT | etcd us/PUT | master + etcd us/PUT | problems |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    sqlite = get(result, "targets", "sqlite", "rps")
    for name, t in (result.get("targets") or {}).items():
        share = ratio(t["rps"], sqlite)
        etcd_us = (t.get("beside_cpu_us") or {}).get("etcd")
        master_us = t["server_cpu_us"]
        both = None if etcd_us is None or master_us is None else etcd_us + master_us
        runs = ", ".join(num(r) for r in t["rps_runs"])
        lines.append(
            f"| {labels.get(name, name)} | {num(t['rps'])} | {runs} | "
            f"{'-' if share is None else f'{share:.2f}x'} | {dec(t['p50_ms'], 2)} | "
            f"{dec(t['p99_ms'], 2)} | {dec(t['client_cpu_pct'], 0)} % | "
            f"{dec(t['server_cpu_pct'], 0)} % | {dec(t['server_cpu_us'], 0)} | "
            f"{dec(etcd_us, 0)} | {dec(both, 0)} | {'; '.join(t['problems']) or '-'} |"
        )
    python = result.get("python") or {}
    if python:
        lines += [
            "",
            f"Python-client cross-check ({result['python_services']:,} registrations, 64 "
            "concurrent):",
            "",
            "| server | PUT/s | p50 ms | p99 ms | client CPU | master us/PUT | problems |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, t in python.items():
            lines.append(
                f"| {labels.get(name, name)} | {num(t['rps'])} | {dec(t['p50_ms'], 1)} | "
                f"{dec(t['p99_ms'], 1)} | {dec(t['client_cpu_pct'], 0)} % | "
                f"{dec(t['server_cpu_us'], 0)} | {'; '.join(t['problems']) or '-'} |"
            )
    lines += [
        "",
        "CPU per PUT: utime + stime from /proc/PID/stat (all threads) over the wrk run, over "
        "the requests wrk completed; etcd's is its own process over the same run. On this "
        "2-core machine wrk, the master and etcd share two cores.",
    ]
    return lines


CASE = Case(
    name="etcd",
    order=70,
    run=run,
    goals=goals,
    section=section,
    headline=headline,
)
