"""The two sizes of run: `full` (`make bench`) and `quick` (`make bench-quick`, < 4 min).

Same cases, same code; quick only runs wrk for shorter windows, repeats less and sends the
Python cross-check fewer requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    repeats: int  # of every wrk measurement, the targets in turn; the median is reported
    wrk_seconds: float  # each wrk run (-d)
    py_repeats: int  # of every Python-client cross-check
    # 1. registration (the Python cross-check's requests)
    register_n: int
    picoapi_register_seconds: float  # cap: its checker threads make it slow
    # 2. lookup
    list_services: int  # registered when the full list is measured
    lookup_services: int  # registered when the tag lookups are measured
    lookup_n: int  # Python cross-check: tag and id GETs
    list_n: int  # Python cross-check: full lists
    wake_rounds: int
    # 3. health-check capacity
    health_ns: tuple[int, ...]
    health_faulty_ns: tuple[int, ...]
    picoapi_health_ns: tuple[int, ...]
    picoapi_health_faulty_ns: tuple[int, ...]
    health_settle_s: float
    health_window_s: float
    picoapi_register_cap_s: float
    # 4. freshness
    freshness_rounds: int
    restart_sidecars: int
    # 5. footprint
    idle_s: float
    health_calls: int
    # 6. master memory
    memory_services: int


FULL = Mode(
    name="full",
    repeats=3,
    wrk_seconds=10.0,
    py_repeats=2,
    register_n=10_000,
    picoapi_register_seconds=30.0,
    list_services=10_000,
    lookup_services=30_000,
    lookup_n=20_000,
    list_n=60,
    wake_rounds=10,
    health_ns=(1_000, 5_000, 10_000, 20_000),
    health_faulty_ns=(1_000, 5_000, 10_000, 20_000),
    picoapi_health_ns=(1_000, 5_000, 10_000),
    picoapi_health_faulty_ns=(1_000,),
    health_settle_s=10.0,
    health_window_s=20.0,
    picoapi_register_cap_s=60.0,
    freshness_rounds=5,
    restart_sidecars=5,
    idle_s=60.0,
    health_calls=1_000,
    memory_services=10_000,
)

QUICK = Mode(
    name="quick",
    repeats=2,
    wrk_seconds=3.0,
    py_repeats=1,
    register_n=5_000,
    picoapi_register_seconds=6.0,
    list_services=10_000,
    lookup_services=30_000,
    lookup_n=5_000,
    list_n=16,
    wake_rounds=3,
    health_ns=(10_000,),
    health_faulty_ns=(10_000,),
    picoapi_health_ns=(1_000,),
    picoapi_health_faulty_ns=(),
    health_settle_s=2.0,
    health_window_s=10.0,
    picoapi_register_cap_s=20.0,
    freshness_rounds=3,
    restart_sidecars=3,
    idle_s=8.0,
    health_calls=200,
    memory_services=10_000,
)

MODES = {"full": FULL, "quick": QUICK}
