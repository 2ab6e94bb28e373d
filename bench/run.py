"""Run the benchmark: every case, then latest.json, latest.md and the plots.

    bench/.venv/bin/python -m bench.run --mode quick          # make bench-quick, < 4 min
    bench/.venv/bin/python -m bench.run --mode full --profile # make bench
    bench/.venv/bin/python -m bench.run --mode quick --cases registration,memory

Run from the repository root, in bench/.venv (the project installed with matplotlib and
py-spy); the original picoapi master runs from bench/.venv-picoapi. Everything listens on
127.0.0.1; every process a case starts is stopped by pid when the case ends. A case that
fails is reported as failed and the others still run. The cases are the `bench/case_*.py`
modules that define a `CASE` (bench/cases.py): a new one needs no change here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import time
import traceback
from typing import Any

from bench import profile, report
from bench.cases import Case, discover
from bench.common import RESULTS, log, machine
from bench.modes import MODES, Mode

CASES: dict[str, Case] = discover()


async def run(mode: Mode, names: list[str], with_profile: bool) -> dict[str, Any]:
    logs = RESULTS / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    started = time.perf_counter()
    info = machine()
    log(
        f"bench {mode.name}: {info['cores']} cores, load {info['loadavg']}, cases "
        f"{', '.join(names)}"
    )
    cases: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in names:
        case_started = time.perf_counter()
        try:
            cases[name] = await CASES[name].run(mode, logs)
        except Exception as exc:
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"case {name} FAILED: {errors[name]}")
        log(f"case {name}: {time.perf_counter() - case_started:.0f} s")
    if with_profile:
        try:
            cases["profile"] = await profile.run(logs)
        except Exception as exc:
            errors["profile"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"profile FAILED: {errors['profile']}")
    return complete(
        {
            "mode": mode.name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cores": info["cores"],
            "loadavg": info["loadavg"],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "duration_s": time.perf_counter() - started,
            "machine": info,
            "ran": names,
            "errors": errors,
            "plots": [],
            "cases": cases,
        }
    )


def complete(result: dict[str, Any]) -> dict[str, Any]:
    """The headline keys, the goals and the other checks, from the cases' results.

    `errors` are the cases that failed to measure; `report_errors` the cases whose report
    failed (computed afresh each time, as is everything here)."""
    report_errors: dict[str, str] = {}
    headline = report.headline(CASES, result["cases"], report_errors)
    return {
        **result,
        **headline,
        "headline": headline,
        "goals": report.goals(CASES, result, report_errors),
        "checks": report.checks(CASES, result, report_errors),
        "report_errors": report_errors,
    }


def _clean(value: Any) -> Any:
    """NaN and infinity are not JSON: None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, in order")
    parser.add_argument("--profile", action="store_true", help="py-spy the master's PUT path")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild the goals, latest.md and plots from latest.json",
    )
    args = parser.parse_args()
    if args.report_only:
        return write(complete(json.loads((RESULTS / "latest.json").read_text())))
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    return write(asyncio.run(run(MODES[args.mode], names, args.profile)))


def write(result: dict[str, Any]) -> int:
    """latest.json, latest.md and the plots; 1 if any case (or its report) failed."""
    errors = result["report_errors"]
    result["plots"] = report.plots(CASES, result["cases"], RESULTS, errors)
    markdown = report.markdown(CASES, result)
    result = _clean(result)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown)
    goals_at = markdown.find("## Goals")
    table_end = markdown.find("\n## ", goals_at + 1)
    print(markdown[: table_end if table_end > 0 else len(markdown)])
    log(f"wrote {RESULTS / 'latest.json'}, latest.md and {len(result['plots'])} plots")
    return 1 if result["errors"] or result["report_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
