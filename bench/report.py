"""From the cases' results: the headline keys, the targets (met or not), latest.md, plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common import median

Target = dict[str, Any]


def _get(results: dict[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _health_run(cases: dict[str, Any], system: str, n: int, faulty: bool) -> dict[str, Any]:
    for run in _get(cases, "health", "runs") or []:
        if run["system"] == system and run["services"] == n and run["faulty"] == faulty:
            found: dict[str, Any] = run
            return found
    return {}


def headline(cases: dict[str, Any]) -> dict[str, Any]:
    """The flat keys latest.json promises (None where a case failed or did not run)."""
    reg = _get(cases, "registration", "targets") or {}
    queries = _get(cases, "lookup", "queries") or {}
    fresh = cases.get("freshness") or {}
    foot = cases.get("footprint") or {}
    mem = cases.get("memory") or {}
    ours_10k = _health_run(cases, "picoapi-sidecar", 10_000, False)
    faulty_10k = _health_run(cases, "picoapi-sidecar", 10_000, True)
    return {
        "registration_rps_sqlite": _get(reg, "sqlite", "rps"),
        "registration_rps_memory": _get(reg, "memory", "rps"),
        "registration_rps_picoapi": _get(reg, "picoapi", "rps"),
        "registration_rps_picoapi_route_only": _get(reg, "picoapi_route", "rps"),
        "hello_rps": _get(reg, "hello", "rps"),
        "hello_put_server_cpu_us": _get(reg, "hello", "server_cpu_us"),
        "registration_sqlite_server_cpu_us": _get(reg, "sqlite", "server_cpu_us"),
        "hello_get_server_cpu_us": _get(queries, "hello", "server_cpu_us"),
        "tag_lookup_server_cpu_us": _get(queries, "tag", "server_cpu_us"),
        "hello_get_rps_wrk": _get(cases, "lookup", "wrk", "rps", "hello"),
        "tag_lookup_rps_wrk": _get(cases, "lookup", "wrk", "rps", "tag"),
        "hello_get_rps": _get(queries, "hello", "rps"),
        "tag_lookup_rps": _get(queries, "tag", "rps"),
        "tag_lookup_p50_ms": _get(queries, "tag", "p50_ms"),
        "tag_lookup_p99_ms": _get(queries, "tag", "p99_ms"),
        "id_lookup_rps": _get(queries, "id", "rps"),
        "id_lookup_p99_ms": _get(queries, "id", "p99_ms"),
        "list_rps": _get(queries, "list", "rps"),
        "list_p99_ms": _get(queries, "list", "p99_ms"),
        "blocking_wake_p50_ms": _get(cases, "lookup", "blocking", "p50_ms"),
        "blocking_wake_p99_ms": _get(cases, "lookup", "blocking", "p99_ms"),
        "check_lag_p50_ms_10k": ours_10k.get("lag_p50_ms"),
        "check_lag_p99_ms_10k": ours_10k.get("lag_p99_ms"),
        "check_lag_p99_ms_10k_faulty": faulty_10k.get("lag_p99_ms"),
        "checks_per_s_10k": ours_10k.get("checks_per_s"),
        "master_cpu_pct_10k": ours_10k.get("cpu_pct"),
        "master_cpu_pct_10k_faulty": faulty_10k.get("cpu_pct"),
        "master_rss_mib_10k": ours_10k.get("rss_mib"),
        "sidecar_rss_mib": foot.get("sidecar_rss_mib"),
        "sidecar_uss_mib": foot.get("sidecar_uss_mib"),
        "floor_rss_mib": foot.get("floor_rss_mib"),
        "floor_uss_mib": foot.get("floor_uss_mib"),
        "sidecar_idle_cpu_pct": foot.get("sidecar_idle_cpu_pct"),
        "health_overhead_p50_ms": foot.get("health_overhead_p50_ms"),
        "health_overhead_p99_ms": foot.get("health_overhead_p99_ms"),
        "master_bytes_per_service": _get(mem, "memory", "bytes_per_service"),
        "master_bytes_per_service_openapi": _get(mem, "memory_openapi", "bytes_per_service"),
        "master_bytes_per_service_sqlite": _get(mem, "sqlite", "bytes_per_service"),
        "death_to_critical_s": _median_or_none(fresh.get("death_to_critical_s")),
        "death_to_critical_max_s": _max_or_none(fresh.get("death_to_critical_s")),
        "tag_edit_to_master_s": _median_or_none(fresh.get("tag_edit_s")),
        "tag_edit_to_master_max_s": _max_or_none(fresh.get("tag_edit_s")),
        "restart_all_back_s": _get(fresh, "restart", "from_start_s"),
    }


def _median_or_none(values: list[float] | None) -> float | None:
    return median(values) if values else None


def _max_or_none(values: list[float] | None) -> float | None:
    return max(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def targets(h: dict[str, Any]) -> list[Target]:
    """Each goal of the issue: what it compares, the measured value, the ratio, met or not.

    `ratio` is measured / reference for the relative goals and measured / limit for the
    absolute ones; `ge` says the ratio must reach `need`, else stay below it (or, with
    `inclusive`, at most reach it: "within").
    """
    rows: list[Target] = []

    def add(
        goal: str,
        value: Any,
        shown: str,
        ratio: float | None,
        need: float,
        ge: bool,
        inclusive: bool = False,
    ) -> None:
        if ratio is None:
            met = None
        elif ge:
            met = ratio >= need
        else:
            met = ratio <= need if inclusive else ratio < need
        rows.append(
            {
                "target": goal,
                "measured": shown,
                "value": value,
                "ratio": ratio,
                "need": f"{'>=' if ge else '<=' if inclusive else '<'} {need:g}",
                "met": met,
            }
        )

    sqlite, hello, picoapi = (
        h["registration_rps_sqlite"],
        h["hello_rps"],
        h["registration_rps_picoapi"],
    )
    add(
        "Registration on SQLite >= 60 % of the hello ceiling",
        sqlite,
        f"{_n(sqlite)}/s vs {_n(hello)}/s",
        _ratio(sqlite, hello),
        0.6,
        True,
    )
    add(
        "Registration on SQLite >= 10x the picoapi master",
        sqlite,
        f"{_n(sqlite)}/s vs {_n(picoapi)}/s",
        _ratio(sqlite, picoapi),
        10,
        True,
    )
    rows.append(
        _info_cpu(
            "registration", h["registration_sqlite_server_cpu_us"], h["hello_put_server_cpu_us"]
        )
    )
    route = h["registration_rps_picoapi_route_only"]
    rows.append(
        {
            "target": "(info) ... vs picoapi's route alone, no health-check thread",
            "measured": f"{_n(sqlite)}/s vs {_n(route)}/s",
            "value": sqlite,
            "ratio": _ratio(sqlite, route),
            "need": "-",
            "met": None,
        }
    )
    tag, hello_get = h["tag_lookup_rps"], h["hello_get_rps"]
    add(
        "Tag lookup (10 of 10,000) >= 80 % of the hello ceiling",
        tag,
        f"{_n(tag)}/s vs {_n(hello_get)}/s",
        _ratio(tag, hello_get),
        0.8,
        True,
    )
    rows.append(
        _info_cpu("tag lookup", h["tag_lookup_server_cpu_us"], h["hello_get_server_cpu_us"])
    )
    tag_wrk, hello_wrk = h["tag_lookup_rps_wrk"], h["hello_get_rps_wrk"]
    rows.append(
        {
            "target": "(info) ... tag lookup vs hello, both driven by wrk instead",
            "measured": f"{_n(tag_wrk)}/s vs {_n(hello_wrk)}/s",
            "value": tag_wrk,
            "ratio": _ratio(tag_wrk, hello_wrk),
            "need": "-",
            "met": None,
        }
    )
    for key, label in (
        ("check_lag_p99_ms_10k", "10,000 services at 10 s: lag p99 < 1 s"),
        ("check_lag_p99_ms_10k_faulty", "... with 10 % hanging and 10 % refusing: lag p99 < 1 s"),
    ):
        value = h[key]
        add(label, value, f"{_f(value, 1)} ms", _ratio(value, 1000.0), 1, False)
    for key, label in (
        ("master_cpu_pct_10k", "... master under one core"),
        ("master_cpu_pct_10k_faulty", "... master under one core (faulty)"),
    ):
        value = h[key]
        add(label, value, f"{_f(value, 1)} % of a core", _ratio(value, 100.0), 1, False)
    rss, floor = h["sidecar_rss_mib"], h["floor_rss_mib"]
    add(
        "Sidecar RSS within 10 % of the floor",
        rss,
        f"{_f(rss, 1)} MiB vs {_f(floor, 1)} MiB",
        _ratio(rss, floor),
        1.1,
        False,
    )
    cpu = h["sidecar_idle_cpu_pct"]
    add("Sidecar idle CPU < 0.5 % of a core", cpu, f"{_f(cpu, 3)} %", _ratio(cpu, 0.5), 1, False)
    over = h["health_overhead_p50_ms"]
    add(
        "Sidecar /health adds < 1 ms at the median",
        over,
        f"{_f(over, 3)} ms",
        _ratio(over, 1.0),
        1,
        False,
    )
    per = h["master_bytes_per_service"]
    add(
        "Master < 4 KiB per service (no OpenAPI document)",
        per,
        f"{_n(per)} bytes",
        _ratio(per, 4096.0),
        1,
        False,
    )
    death, death_max = h["death_to_critical_s"], h["death_to_critical_max_s"]
    add(
        "Death to critical <= interval + timeout + 0.5 s (2 s; worst round)",
        death_max,
        f"median {_f(death, 2)} s, worst {_f(death_max, 2)} s",
        _ratio(death_max, 2.0),
        1,
        False,
        inclusive=True,
    )
    edit, edit_max = h["tag_edit_to_master_s"], h["tag_edit_to_master_max_s"]
    add(
        "Tag edit to master < 1 s (worst round)",
        edit_max,
        f"median {_f(edit, 3)} s, worst {_f(edit_max, 3)} s",
        _ratio(edit_max, 1.0),
        1,
        False,
    )
    return rows


def _info_cpu(what: str, ours: float | None, hello: float | None) -> Target:
    """The same comparison without the client: server CPU per request, hello's over ours."""
    return {
        "target": f"(info) ... {what}, server CPU per request: hello's / ours",
        "measured": f"{_f(ours, 0)} us vs hello {_f(hello, 0)} us",
        "value": ours,
        "ratio": _ratio(hello, ours),
        "need": "-",
        "met": None,
    }


def _n(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _met(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "-"}[met]


# --- latest.md -------------------------------------------------------------------------

METHOD = """\
## How this was measured

- **Load generator**: `bench/loadgen.py`, an aiohttp client with 64 concurrent workers on
  keep-alive connections, every request built before the clock starts, bounded in count
  and time. It runs in its own process, so on this machine the client has one core and
  the server under test the other: neither's event loop slows the other's. An aiohttp
  client rather than `wrk`: wrk would generate load faster, but its PUT bodies need Lua,
  and the same Python client sends the picoapi master its GET-with-a-body. The cost is a
  lower ceiling: on the hello server the client itself runs at about 100 % of its core
  (the `client CPU` column), so the hello ceiling is that of this client and aiohttp
  together, and ratios against it are what the targets compare. (By hand, `wrk -t1 -c64`
  drew about 27,000 GETs/s from the same hello server: the server alone is faster than
  this client.) So every throughput row also gives the server's CPU per request (psutil,
  by pid, over the run), a comparison no client limits: the `(info)` rows of the targets.
- **Hello ceiling**: `bench/hello.py`, a plain aiohttp server that reads the body and
  answers `{"status":"ok"}` to any PUT or GET, measured by the same client.
- **The original picoapi master**: `picoapi==1.0.4` in its own venv with its FastAPI and
  `uvicorn[standard]` (uvloop and httptools, as FastAPI recommends), run as its README
  says (`API_MASTER` set; `bench/picoapi_master.py`). Its `/register` route is GET-only as
  shipped (its own services PUT, and get 405), so it is sent what it accepts: GET
  `/register` with the JSON body its services build. Each registration starts a thread
  that checks the service at once and then every `interval` (here 1 h, as our services'
  check interval in this case); `picoapi (route only)` sends no healthcheck, so no thread
  starts: the route alone.
- **Health-check lag**: our master's `picoapi_check_lag_seconds` histogram (start time
  minus due time of each check), differenced between two scrapes around the window;
  quantiles interpolated within buckets as Prometheus' `histogram_quantile` does. The
  swarm also times the gap between two checks of one service minus the interval, for
  both masters (picoapi has no metrics, so that is its lag: its threads sleep a fixed
  delay after each check, so every round drifts by the check's own time).
- **CPU and memory**: psutil by pid; CPU is user + system time over the window, in % of
  one core; USS is memory no other process shares.
- Medians of repeated runs; within a repeat the targets are measured one after another,
  so drift on a shared machine hits all of them alike.
"""


def markdown(report: dict[str, Any]) -> str:
    cases = report["cases"]
    h = report["headline"]
    m = report["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"{report['date']}, mode **{report['mode']}**, {m['cores']} cores, load average "
        f"{' / '.join(str(x) for x in m['loadavg'])} at the start and "
        f"{' / '.join(str(x) for x in report['loadavg_end'])} at the end, Python "
        f"{m['python']}, aiohttp {m['aiohttp']}; the run took {report['duration_s']:.0f} s. "
        "Regenerate with `make bench` (or `make bench-quick`).",
        "",
        "## Targets",
        "",
        "| target | measured | ratio | goal | met |",
        "|---|---|---:|---|---|",
    ]
    for row in report["targets"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3g}"
        lines.append(
            f"| {row['target']} | {row['measured']} | {ratio} | {row['need']} | "
            f"{_met(row['met'])} |"
        )
    if report["errors"]:
        lines += [
            "",
            "**Cases that failed**: "
            + "; ".join(f"{name}: {error}" for name, error in report["errors"].items()),
        ]
    lines += _registration_md(cases.get("registration"))
    lines += _lookup_md(cases.get("lookup"))
    lines += _health_md(cases.get("health"))
    lines += _freshness_md(cases.get("freshness"))
    lines += _footprint_md(cases.get("footprint"))
    lines += _memory_md(cases.get("memory"))
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in report["plots"]]
    lines += ["", METHOD]
    del h
    return "\n".join(lines) + "\n"


_NAMES = {
    "hello": "hello ceiling (aiohttp)",
    "sqlite": "picoapi-sidecar master, sqlite:///",
    "memory": "picoapi-sidecar master, memory://",
    "picoapi": "picoapi 1.0.4 master (as its services send)",
    "picoapi_route": "picoapi 1.0.4 master (route only)",
}


_SHORT = {
    "hello": "hello\nceiling",
    "sqlite": "ours\nsqlite:///",
    "memory": "ours\nmemory://",
    "picoapi": "picoapi 1.0.4\n(as sent)",
    "picoapi_route": "picoapi 1.0.4\n(route only)",
}


def _registration_md(reg: dict[str, Any] | None) -> list[str]:
    if not reg:
        return []
    lines = [
        "",
        f"## 1. Registration ({reg['services']:,} services, {reg['concurrency']} concurrent,"
        f" median of {reg['repeats']})",
        "",
        "| server | PUT/s | runs | vs hello | p50 ms | p99 ms | client CPU | server CPU |"
        " server us/PUT |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    hello = reg["targets"].get("hello", {}).get("rps")
    for name, t in reg["targets"].items():
        share = _ratio(t["rps"], hello)
        runs = ", ".join(f"{r:,.0f}" for r in t["rps_runs"])
        note = " (stopped at the time cap)" if t["truncated"] else ""
        lines.append(
            f"| {_NAMES.get(name, name)}{note} | {t['rps']:,.0f} | {runs} | "
            f"{'-' if share is None else f'{share:.0%}'} | {t['p50_ms']:.1f} | "
            f"{t['p99_ms']:.1f} | {t['client_cpu_pct']:.0f} % | {t['server_cpu_pct']:.0f} % | "
            f"{t['server_cpu_us']:.0f} |"
        )
    return lines


def _lookup_md(lookup: dict[str, Any] | None) -> list[str]:
    if not lookup:
        return []
    q = lookup["queries"]
    lines = [
        "",
        f"## 2. Lookup ({lookup['services']:,} registered, median of {lookup['repeats']})",
        "",
        "| query | req/s | vs hello | p50 ms | p99 ms | concurrency | client CPU | server CPU |"
        " server us/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "hello": "hello ceiling (same GETs)",
        "tag": f"`?tag=grp-K` ({lookup['tag_matches']} match)",
        "id": "`/v1/services/{id}`",
        "list": "`/v1/services` (all)",
    }
    hello = q.get("hello", {}).get("rps")
    for name, t in q.items():
        share = _ratio(t["rps"], hello)
        lines.append(
            f"| {labels.get(name, name)} | {t['rps']:,.0f} | "
            f"{'-' if share is None else f'{share:.0%}'} | {t['p50_ms']:.2f} | "
            f"{t['p99_ms']:.2f} | {t['concurrency']} | {t['client_cpu_pct']:.0f} % | "
            f"{t['server_cpu_pct']:.0f} % | {t['server_cpu_us']:,.0f} |"
        )
    wrk = lookup.get("wrk")
    if wrk:
        rps = wrk["rps"]
        lines += [
            "",
            f"Cross-check with `wrk -t1 -c64 -d{wrk['seconds']}s` on the same tag GET "
            f"(median of {len(wrk['runs']['tag'])}): hello {rps['hello']:,.0f}/s, ours "
            f"{rps['tag']:,.0f}/s ({rps['tag'] / rps['hello']:.0%}).",
        ]
    b = lookup["blocking"]
    lines += [
        "",
        f"Blocking query woken by a change: {b['watchers']} watchers x {b['rounds']} rounds; "
        f"from the PUT to each answer p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms "
        f"(max {b['max_ms']:.1f} ms); {b['answers_per_s']:,.0f} answers/s.",
    ]
    return lines


def _health_md(health: dict[str, Any] | None) -> list[str]:
    if not health:
        return []
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
            f"{_f(r['lag_p50_ms'], 1)} | {_f(r['lag_p99_ms'], 1)} | "
            f"{_f(r['late_at_swarm_p99_ms'], 1)} | {r['cpu_pct']:.0f} % | "
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


def _freshness_md(fresh: dict[str, Any] | None) -> list[str]:
    if not fresh:
        return []
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


def _footprint_md(foot: dict[str, Any] | None) -> list[str]:
    if not foot:
        return []
    return [
        "",
        f"## 5. Sidecar footprint (idle {foot['idle_s']:.0f} s, {foot['health_calls']:,} "
        "sequential /health calls)",
        "",
        "| process | RSS MiB | USS MiB | idle CPU |",
        "|---|---:|---:|---:|",
        f"| picoapi-sidecar | {foot['sidecar_rss_mib']:.1f} | {foot['sidecar_uss_mib']:.1f} | "
        f"{foot['sidecar_idle_cpu_pct']:.3f} % |",
        f"| floor (aiohttp + pyyaml + psutil + structlog, one route) | "
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


def _memory_md(mem: dict[str, Any] | None) -> list[str]:
    if not mem:
        return []
    lines = [
        "",
        f"## 6. Master memory ({mem['services']:,} services, a fresh master each)",
        "",
        "| store, document | RSS before MiB | RSS after MiB | bytes per service |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "memory": "memory://, no OpenAPI document",
        "memory_openapi": f"memory://, a {mem['openapi_bytes']:,}-byte OpenAPI document each",
        "sqlite": "sqlite:///, no OpenAPI document",
    }
    for key, label in labels.items():
        if key in mem:
            r = mem[key]
            lines.append(
                f"| {label} | {r['rss_before_mib']:.1f} | {r['rss_after_mib']:.1f} | "
                f"{r['bytes_per_service']:,.0f} |"
            )
    return lines


# --- plots -----------------------------------------------------------------------------


def plots(cases: dict[str, Any], out: Path) -> list[str]:
    """PNG files in `out` (matplotlib, Agg); returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    reg = _get(cases, "registration", "targets")
    if reg:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(reg)
        ax.bar(range(len(names)), [reg[n]["rps"] for n in names], color="#4c78a8")
        for i, n in enumerate(names):
            ax.plot([i] * len(reg[n]["rps_runs"]), reg[n]["rps_runs"], "k.", alpha=0.6)
        ax.set_xticks(range(len(names)), [_SHORT.get(n, n) for n in names], fontsize=8)
        ax.set_ylabel("PUTs per second (median; dots: runs)")
        ax.set_title("1. Registration, 64 concurrent clients")
        save(fig, "registration.png")

    queries = _get(cases, "lookup", "queries")
    if queries:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
        names = list(queries)
        left.bar(names, [queries[n]["rps"] for n in names], color="#59a14f")
        left.set_ylabel("requests per second")
        left.set_yscale("log")
        right.bar(names, [queries[n]["p99_ms"] for n in names], color="#e15759")
        right.set_ylabel("p99 latency, ms")
        right.set_yscale("log")
        fig.suptitle("2. Lookup with 10,000 registered (hello = ceiling)")
        save(fig, "lookup.png")

    runs = _get(cases, "health", "runs")
    if runs:
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
        save(fig, "health.png")

    fresh = cases.get("freshness")
    if fresh:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot(fresh["death_to_critical_s"], [1] * len(fresh["death_to_critical_s"]), "o")
        ax.plot(fresh["tag_edit_s"], [0] * len(fresh["tag_edit_s"]), "o")
        ax.plot([2.0], [1], "r|", markersize=30)
        ax.plot([1.0], [0], "r|", markersize=30)
        ax.set_yticks([0, 1], ["tag edit", "death to\ncritical"])
        ax.set_xlabel("seconds (red: target)")
        ax.set_ylim(-0.5, 1.5)
        ax.set_title("4. Freshness, each round")
        save(fig, "freshness.png")

    foot = cases.get("footprint")
    mem = cases.get("memory")
    if foot or mem:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        if foot:
            labels = ["RSS", "USS"]
            x = range(len(labels))
            axes[0].bar(
                [i - 0.2 for i in x],
                [foot["sidecar_rss_mib"], foot["sidecar_uss_mib"]],
                0.4,
                label="sidecar",
            )
            axes[0].bar(
                [i + 0.2 for i in x],
                [foot["floor_rss_mib"], foot["floor_uss_mib"]],
                0.4,
                label="floor",
            )
            axes[0].set_xticks(list(x), labels)
            axes[0].set_ylabel("MiB")
            axes[0].legend(fontsize=8)
            axes[0].set_title("5. Sidecar vs floor")
        if mem:
            keys = [k for k in ("memory", "memory_openapi", "sqlite") if k in mem]
            axes[1].bar(keys, [mem[k]["bytes_per_service"] for k in keys], color="#f28e2b")
            axes[1].axhline(4096, color="grey", linestyle="--", linewidth=1)
            axes[1].set_ylabel("bytes per service (target < 4 KiB w/o doc)")
            axes[1].set_title("6. Master memory")
        save(fig, "memory.png")
    return made
