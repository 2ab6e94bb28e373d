"""The two sizes of run: `full` (`make bench`) and `quick` (`make bench-quick`).

Same cases, same code; quick only runs wrk for shorter windows, repeats less, sends the
Python cross-check fewer requests, and runs the etcd cases (7-10) with fewer services,
a shorter member TTL and check interval, and shorter windows.
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
    # 8. failover: three masters on etcd, one SIGKILLed
    failover_services: int
    failover_interval_s: float  # each service's check interval
    failover_member_ttl_s: float  # --member-ttl
    failover_rounds: int  # each kills a different master (restarted between rounds)
    # 9. health-check capacity on etcd: (services, (masters, ...)) at 10 s
    etcd_capacity: tuple[tuple[int, tuple[int, ...]], ...]
    etcd_capacity_settle_s: float  # after the masters agree: more than one interval, so
    # the services a joining master takes (first checked spread over an interval) are settled
    etcd_capacity_window_s: float
    # 10. steady-state writes to etcd (three masters, the failover case's services)
    steady_window_s: float


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
    failover_services=3_000,
    failover_interval_s=10.0,
    failover_member_ttl_s=10.0,
    failover_rounds=3,
    etcd_capacity=((10_000, (1, 2, 3)), (30_000, (1, 2, 3))),
    etcd_capacity_settle_s=15.0,
    etcd_capacity_window_s=20.0,
    steady_window_s=60.0,
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
    failover_services=300,
    failover_interval_s=1.0,
    failover_member_ttl_s=3.0,
    failover_rounds=1,
    etcd_capacity=((5_000, (1, 3)),),
    etcd_capacity_settle_s=11.0,
    etcd_capacity_window_s=10.0,
    steady_window_s=20.0,
)

MODES = {"full": FULL, "quick": QUICK}
