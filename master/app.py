"""The master's aiohttp application: routes, and the owner of every background part.

The store, the registry and the health scheduler are started and stopped here, in that
order and its reverse, through one cleanup context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from master import api, catalog_apis, compat, consul, dashboard, spec
from master.auth import Auth
from master.cluster import DEFAULT_MEMBER_TTL, Membership, Ownership, Solo
from master.eviction import EvictionGuard
from master.health import HealthScheduler
from master.metrics import Metrics, gauge
from master.model import DEFAULT_DEREGISTER_AFTER
from master.policy import CheckPolicy
from master.registry import Registry
from master.store.base import Store
from master.store.etcd import EtcdStore

log = structlog.get_logger("master.app")

SCHEDULER: Final = web.AppKey("scheduler", HealthScheduler)


def build_app(
    store: Store,
    auth: Auth,
    *,
    check_concurrency: int = 512,
    member_ttl: float = DEFAULT_MEMBER_TTL,
    address: str = "",
    policy: CheckPolicy | None = None,
    max_watchers: int = 8_000,
    read_timeout: float = 10.0,
    max_document_bytes: int = 128 << 20,
    picoapi_deregister_after: float = DEFAULT_DEREGISTER_AFTER,
    eviction_guard: EvictionGuard | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=api.MIDDLEWARES, client_max_size=api.BODY_MAX_WITH_OPENAPI + 1
    )
    registry = Registry(store, max_waiters=max_watchers, max_document_bytes=max_document_bytes)
    metrics = Metrics()
    # Several masters on one etcd share the checks; on a local store this one does all.
    ownership: Ownership = (
        Membership(store, ttl=member_ttl, address=address)
        if isinstance(store, EtcdStore)
        else Solo()
    )
    app[api.REGISTRY] = registry
    app[api.METRICS] = metrics
    app[api.AUTH] = auth
    app[api.STORE] = store
    app[api.OWNERSHIP] = ownership
    app[api.POLICY] = policy = policy or CheckPolicy()
    app[api.READ_TIMEOUT] = read_timeout
    app[compat.PICOAPI_DEREGISTER_AFTER] = picoapi_deregister_after
    app[api.EVICTION_GUARD] = guard = eviction_guard or EvictionGuard()
    app[SCHEDULER] = HealthScheduler(
        registry,
        metrics,
        concurrency=check_concurrency,
        ownership=ownership,
        policy=policy,
        guard=guard,
    )
    metrics.add_figures(partial(registry_figures, registry))
    metrics.add_figures(partial(guard_figures, guard))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            loaded = await registry.load()
        except BaseException:
            await store.close()  # an etcd client's session, a file lock: let go of them
            raise
        log.info(
            "registry_loaded",
            store=store.describe(),
            services=loaded,
            index=registry.index,
            check_policy=policy.describe(),
            **store.log_fields(),
        )
        for side, open_to_all in (("writes", auth.write is None), ("reads", auth.read is None)):
            if open_to_all:
                log.warning(
                    "api_open_to_all",
                    side=side,
                    hint=f"anyone who reaches the master may {side[:-1]}: give "
                    f"--{'token-file' if side == 'writes' else 'read-token-file'}",
                )
        if isinstance(store, EtcdStore):
            store.follow_documents(registry.document_users)
        scheduler = app[SCHEDULER]
        await ownership.start()
        await scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()
            await ownership.stop()
            registry.close()
            await store.close()
            log.info("store_closed", store=store.describe())

    async def release_watchers(app: web.Application) -> None:
        registry.wake_everyone()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(release_watchers)
    api.add_routes(app)
    compat.add_routes(app)
    consul.add_routes(app)
    catalog_apis.add_routes(app)
    dashboard.add_routes(app)
    spec.add_routes(app)
    consul.add_fallbacks(app)  # last: after every route it might otherwise hide
    return app


def registry_figures(registry: Registry) -> Iterator[Any]:
    """The registry's own figures, read when scraped."""
    services = GaugeMetricFamily(
        "picoapi_services", "Registered services by status.", labels=["status"]
    )
    for status, count in registry.status_counts().items():
        services.add_metric([status.value], count)
    yield services
    yield gauge("picoapi_registry_index", "The registry's change index.", registry.index)
    transitions = CounterMetricFamily(
        "picoapi_status_transitions",
        "Status changes this master recorded, by the status changed to.",
        labels=["to"],
    )
    for status, count in sorted(registry.transitions().items()):
        transitions.add_metric([status.value], count)
    yield transitions
    yield gauge(
        "picoapi_last_status_change_timestamp_seconds",
        "When a service last changed status (seconds since the epoch).",
        max((float(r.status_changed_at) for r in registry.records()), default=0.0),
    )
    yield gauge(
        "picoapi_services_flapping",
        "Services whose status changed more often than the flapping threshold lately.",
        sum(1 for r in registry.records() if r.flapping),
    )
    yield gauge(
        "picoapi_openapi_document_bytes",
        "Bytes of OpenAPI documents held, each distinct document once.",
        registry.document_bytes(),
    )


def guard_figures(guard: EvictionGuard) -> Iterator[Any]:
    """The mass-eviction guard's: what it holds now, and what it has held and let go."""
    holding = GaugeMetricFamily(
        "picoapi_evictions_held",
        "Removals (deregister_after) the mass-eviction guard holds back now, by service name.",
        labels=["name"],
    )
    for name, count in guard.holding().items():
        holding.add_metric([name], count)
    yield holding
    outcomes = CounterMetricFamily(
        "picoapi_evictions_guarded",
        "Removals the guard held back, and those it let go after --eviction-hold-max.",
        labels=["outcome"],
    )
    outcomes.add_metric(["held"], guard.held_total)
    outcomes.add_metric(["released"], guard.released_total)
    yield outcomes
