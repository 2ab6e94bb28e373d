"""The chaos test: tests/chaos.py for about two minutes (its docstring says what it does).

`make soak DURATION=600` runs the same harness as long as asked. Here the chaos itself
lasts PICOAPI_CHAOS_SECONDS (default 75 s) with a fixed seed (PICOAPI_CHAOS_SEED), so a
failure can be run again as it was; set-up, warm-up and the checks after it take about
40 s more. The summary table is printed (`pytest -s` shows it; a failure shows it too).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import chaos

SECONDS = float(os.environ.get("PICOAPI_CHAOS_SECONDS", "75"))
SEED = int(os.environ.get("PICOAPI_CHAOS_SEED", "20261201"))


def test_chaos(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node (Node.js) is not installed: the chaos services are server.js")
    report = chaos.run(tmp_path, duration=SECONDS, services=20, seed=SEED)
    print(report.table())
    assert sum(report.events.values()) >= len(chaos.KINDS), report.table()
    assert all(report.events[kind] for kind in chaos.KINDS), report.table()
    assert report.probe["acked_put"] > 0 and report.verifications > 0, report.table()
    assert not report.problems, report.table()
