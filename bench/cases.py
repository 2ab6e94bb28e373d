"""The case list: every `bench/case_*.py` module that defines `CASE = Case(...)` is a case.

A new case (say `case_etcd.py`: registration through one master on an etcd store next to
SQLite) is one more module: its `run` measures, its `goals` add rows to the goals table,
its `section` its own part of latest.md. No other file changes; `run.py` finds it, orders
it by `order`, and `--cases etcd` runs it alone.

A row of the goals table is a dict (see `goal` and `info`):

- `target`: what is compared; `measured`: the values, as text; `ratio`: a float (or None);
- `baseline` and `need`: the issue's figures, as text; `met`: True, False or None;
- `problems`: why a measurement it rests on is not clean (4xx/5xx answers, socket errors,
  a registry count that does not add up). A row with problems reads **error**, whatever
  its ratio.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench
from bench.modes import Mode

Row = dict[str, Any]
Result = dict[str, Any]


def _none(result: Result) -> list[Any]:
    return []


def _no_headline(result: Result) -> dict[str, Any]:
    return {}


def _no_plots(result: Result, out: Path) -> list[str]:
    return []


@dataclass(frozen=True)
class Case:
    name: str
    order: int  # cases run (and report) in this order
    run: Callable[[Mode, Path], Awaitable[Result]]
    # rows of the goals table (goals and their "(info)" cross-checks), from this case's result
    goals: Callable[[Result], list[Row]] = _none
    # rows of the table of other checks (promises not among the goals), same form
    checks: Callable[[Result], list[Row]] = _none
    # this case's part of latest.md: lines, starting with a "## N. ..." heading
    section: Callable[[Result], list[str]] = _none
    # flat keys for latest.json's headline (None where not measured)
    headline: Callable[[Result], dict[str, Any]] = _no_headline
    # PNG plots written to the directory given; their file names
    plots: Callable[[Result, Path], list[str]] = _no_plots


def discover() -> dict[str, Case]:
    """Every case of bench/, by name, in run order."""
    found: list[Case] = []
    for module in pkgutil.iter_modules(bench.__path__):
        if module.name.startswith("case_"):
            case = getattr(importlib.import_module(f"bench.{module.name}"), "CASE", None)
            if isinstance(case, Case):
                found.append(case)
    found.sort(key=lambda case: (case.order, case.name))
    names = [case.name for case in found]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise RuntimeError(f"two cases share a name: {', '.join(sorted(duplicates))}")
    return {case.name: case for case in found}


# --- rows ------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def goal(
    target: str,
    measured: str,
    value: float | None,
    reference: float | None,
    *,
    baseline: str,
    need: float,
    at_least: bool,
    need_text: str | None = None,
    strict: bool = False,
    problems: Iterable[str] = (),
) -> Row:
    """A goal: ratio = value / reference, met when it is >= need (at_least) or <= need
    (with `strict`, < need)."""
    found = ratio(value, reference)
    if found is None:
        met = None
    elif at_least:
        met = found >= need
    else:
        met = found < need if strict else found <= need
    return {
        "target": target,
        "measured": measured,
        "value": value,
        "ratio": found,
        "baseline": baseline,
        "need": need_text or f"{'>=' if at_least else '<' if strict else '<='} {need:g}x",
        "met": met,
        "problems": sorted(set(problems)),
    }


def info(
    target: str,
    measured: str,
    value: float | None,
    reference: float | None,
    problems: Iterable[str] = (),
) -> Row:
    """A cross-check shown next to the goals: a ratio, no goal of its own."""
    return {
        "target": f"(info) {target}",
        "measured": measured,
        "value": value,
        "ratio": ratio(value, reference),
        "baseline": "-",
        "need": "-",
        "met": None,
        "problems": sorted(set(problems)),
    }


def num(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def dec(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def get(results: Any, *path: str) -> Any:
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value
