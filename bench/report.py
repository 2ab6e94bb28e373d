"""From the cases' results: the headline keys, the goals table, latest.md and the plots.

Every case contributes through its `Case` (bench/cases.py): goal rows, other checks, a
section of latest.md, headline keys and plots. Nothing here knows a case by name.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from bench.cases import Case, Row

Cases = dict[str, Case]


def _each(cases: Cases, results: dict[str, Any], what: str, errors: dict[str, str]) -> list[Any]:
    """`case.<what>(result)` for every case that has a result, in case order; a case whose
    report fails (a result of an older shape, say) is noted in `errors`, not fatal."""
    found: list[Any] = []
    for name, case in cases.items():
        if name not in results:
            continue
        try:
            found.append(getattr(case, what)(results[name]))
        except Exception as exc:
            traceback.print_exc()
            errors[f"{name} ({what})"] = f"{type(exc).__name__}: {exc}"[:300]
    return found


def headline(cases: Cases, results: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    """The flat keys of latest.json (None where a case failed or did not run)."""
    flat: dict[str, Any] = {}
    for keys in _each(cases, results, "headline", errors):
        flat.update(keys)
    return flat


def _rows(cases: Cases, result: dict[str, Any], what: str, errors: dict[str, str]) -> list[Row]:
    """Every case's `goals` (or `checks`) rows. A case that ran and failed still gives its
    rows, from an empty result, each marked with why: a goal is never silently missing."""
    results = result["cases"]
    ran = result.get("ran") or list(results)
    rows: list[Row] = []
    for name, case in cases.items():
        if name not in ran:
            continue
        failure = None if name in results else result["errors"].get(name, "did not finish")
        try:
            found = getattr(case, what)(results.get(name) or {})
        except Exception as exc:
            traceback.print_exc()
            errors[f"{name} ({what})"] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        for row in found:
            if failure is not None:
                row["problems"] = [f"the {name} case failed: {failure}"]
            rows.append(row)
    return rows


def goals(cases: Cases, result: dict[str, Any], errors: dict[str, str]) -> list[Row]:
    return _rows(cases, result, "goals", errors)


def checks(cases: Cases, result: dict[str, Any], errors: dict[str, str]) -> list[Row]:
    return _rows(cases, result, "checks", errors)


def _met(row: Row) -> str:
    if row["problems"]:
        return "**error**"
    return {True: "**met**", False: "**missed**", None: "-"}[row["met"]]


def table(rows: list[Row], title: str = "goal") -> list[str]:
    """The rows as a markdown table; a row with problems reads **error** and points to a
    numbered note (one per distinct problem) under the table."""
    lines = [
        f"| {title} | measured | ratio | baseline | goal | met |",
        "|---|---|---:|---|---|---|",
    ]
    notes: dict[str, int] = {}
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3g}x"
        measured = row["measured"]
        if row["problems"]:
            numbers = [notes.setdefault(p, len(notes) + 1) for p in row["problems"]]
            measured += f" (error {', '.join(str(k) for k in numbers)})"
        lines.append(
            f"| {row['target']} | {measured} | {ratio} | {row['baseline']} | {row['need']} | "
            f"{_met(row)} |"
        )
    if notes:
        lines += ["", "Errors: what keeps a row from being a clean measurement.", ""]
        lines += [f"{k}. {problem}" for problem, k in notes.items()]
    return lines


# --- latest.md -------------------------------------------------------------------------

METHOD = """\
## How this was measured

- **Main client: `wrk -t1 -c64 -d<secs> --latency`**, one thread and 64 keep-alive
  connections, in its own process: on this 2-core machine wrk has one core and the server
  under test the other. PUTs come from `bench/lua/put_services.lua` (each request a new
  id: a per-run random prefix and a per-thread counter, so reruns against the same store
  still create new services; the body is the registration `bench/workloads.py` builds, as
  JSON), the picoapi master's registrations from `bench/lua/picoapi_register.lua` (GET
  `/register` with the body, as it accepts it), tag lookups from `bench/lua/get_tags.lua`.
- **Side by side in one run**: the hello ceiling and every server it is compared with are
  measured in the same run, one after another within each repeat, so a busy neighbour
  hits all of them alike; a ratio is the median of one over the median of the other.
- **Errors are errors**: a run with answers >= 400 or socket errors, a registry whose count
  does not grow by one per answered PUT, a service read back that is not the one sent, or
  a lookup whose answer holds the wrong services, marks every row built on it **error**;
  `rps` counts only answers under 400.
- **Server CPU per request**: utime + stime of the server's pid (/proc/PID/stat, all its
  threads) over the wrk run, over the requests completed. No client's speed changes it,
  so it compares two servers even where the client is the limit.
- **Hello ceiling**: `bench/hello.py`, a plain aiohttp server that reads the body and
  answers `{"status":"ok"}`, on the master's own event loop (`master.shared.daemon.run`:
  uvloop where installed; the report checks /proc/PID/maps of both).
- **The original picoapi master**: `picoapi==1.0.4` in its own venv, served by uvicorn with
  `loop="uvloop"` and `http="httptools"` set explicitly (both checked in its maps).
- **Python cross-check** (`(info)` rows): `bench/loadgen.py`, an aiohttp client with 64
  workers, the same targets; it saturates its core near the hello server's rate.
- Medians of repeated runs. Health-check lag from the master's histogram, differenced
  between two scrapes; CPU and memory of the other cases by pid (psutil).
"""


def markdown(cases: Cases, report: dict[str, Any]) -> str:
    results = report["cases"]
    m = report["machine"]
    errors: dict[str, str] = report["report_errors"]
    lines = [
        "# Benchmark results",
        "",
        f"{report['date']}, mode **{report['mode']}**, {m['cores']} cores, load average "
        f"{' / '.join(str(x) for x in m['loadavg'])} at the start and "
        f"{' / '.join(str(x) for x in report['loadavg_end'])} at the end, Python "
        f"{m['python']}, aiohttp {m['aiohttp']}; the run took {report['duration_s']:.0f} s. "
        "Regenerate with `make bench` (or `make bench-quick`).",
        "",
        "## Goals",
        "",
        "Same machine, same run, `wrk -t1 -c64` as the client; `(info)` rows are the "
        "Python-client cross-check.",
        "",
        *table(report["goals"]),
    ]
    sections = _each(cases, results, "section", errors)
    other = report.get("checks") or []
    failed = {**report["errors"], **errors}
    if failed:
        lines += [
            "",
            "**Failed**: " + "; ".join(f"{name}: {error}" for name, error in failed.items()),
        ]
    for section in sections:
        lines += section
    if other:
        lines += ["", "## Other checks", "", *table(other, "check")]
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in report["plots"]]
    lines += ["", METHOD]
    return "\n".join(lines) + "\n"


def plots(cases: Cases, results: dict[str, Any], out: Path, errors: dict[str, str]) -> list[str]:
    """Every case's PNG files in `out` (matplotlib, Agg); their names."""
    import matplotlib

    matplotlib.use("Agg")
    made: list[str] = []
    for name, case in cases.items():
        if name in results:
            try:
                made += case.plots(results[name], out)
            except Exception as exc:
                errors[f"{name} (plots)"] = f"{type(exc).__name__}: {exc}"[:300]
    return made
