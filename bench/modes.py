"""The two sizes of run: `full` (`make bench`) and `quick` (`make bench-quick`, < 3 min).

Same cases, same code; quick only sends fewer requests and watches for shorter windows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    repeats: int  # of every throughput measurement; the median is reported
    # 1. registration
    register_n: int
    picoapi_register_seconds: float  # cap: its checker threads make it slow
    # 2. lookup
    lookup_services: int
    lookup_n: int
    list_n: int
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
    register_n=10_000,
    picoapi_register_seconds=30.0,
    lookup_services=10_000,
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
    register_n=3_000,
    picoapi_register_seconds=6.0,
    lookup_services=10_000,
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
    memory_services=5_000,
)

MODES = {"full": FULL, "quick": QUICK}
