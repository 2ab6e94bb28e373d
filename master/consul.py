"""A read-only, Consul-compatible view of the registry, and Prometheus http_sd targets.

Tools that speak Consul (Prometheus `consul_sd_configs`, Traefik, consul-template, the Go
`consul/api` client, py-consul, node's `consul`) read the catalog from here unchanged: the
field names are Consul's, blocking queries take `index` and `wait`, `filter=` is Consul's
expression language (master.consul_filter: evaluated, or refused with 400, never ignored),
tokens come as `X-Consul-Token` or `?token=` too, and every answer carries the
`X-Consul-*` headers the Go client insists on (it fails without `X-Consul-LastContact`).

We have no nodes: each service's address stands in for the node it runs on, with a node ID
derived from it, in the one datacenter `dc1`. Each entry's CreateIndex and ModifyIndex are
the revisions that created and last changed its record, and a blocking query on one
service (`/v1/catalog/service/web?index=N`) wakes only when that service's entries change.
What a Consul agent serves and we do not (agent writes, KV, sessions, ACLs...) answers 501
`read-only catalog: not supported`, which Consul clients raise as an error.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

from aiohttp import web

from master.api import (
    REGISTRY,
    block,
    index_of,
    json_response,
    parse_bool,
    parse_status,
    wait_of,
)
from master.consul_filter import (
    CATALOG_SERVICE_FIELDS,
    HEALTH_SERVICE_FIELDS,
    FilterError,
    compile_filter,
)
from master.errors import ApiError, BadRequest
from master.model import Record, Status, format_duration
from master.shared.serving import refuse_other_methods

DATACENTER: Final = "dc1"
# Consul starts a new check critical; our "unknown" (not checked yet) means the same.
CONSUL_STATUS: Final = {
    Status.PASSING: "passing",
    Status.WARNING: "warning",
    Status.CRITICAL: "critical",
    Status.UNKNOWN: "critical",
    Status.DRAINING: "critical",  # leaving: no client should be sent there
}
WEIGHTS: Final = {"Passing": 1, "Warning": 1}
META_LABEL_PREFIX: Final = "__meta_picoapi_"
# `meta` keys a service sets to say where Prometheus should scrape it.
METRICS_PATH_META: Final = "metrics_path"
METRICS_PORT_META: Final = "metrics_port"
_NOT_IN_LABEL_RE: Final = re.compile(r"[^a-zA-Z0-9_]")
# Consul's routes that a read-only catalog does not serve, whatever the method.
NOT_SERVED: Final = (
    "/v1/catalog/{tail:.*}",  # nodes, datacenters...: all but what is served
    "/v1/health/{tail:.*}",  # state, checks, node
    "/v1/status/{tail:.*}",  # peers
    "/v1/agent/{tail:.*}",
    "/v1/kv/{tail:.*}",
    "/v1/session/{tail:.*}",
    "/v1/acl/{tail:.*}",
    "/v1/event/{tail:.*}",
    "/v1/txn",
    "/v1/coordinate/{tail:.*}",
    "/v1/connect/{tail:.*}",
    "/v1/config/{tail:.*}",
    "/v1/operator/{tail:.*}",
    "/v1/query/{tail:.*}",
    "/v1/snapshot",
)


class NotSupported(ApiError):
    status = 501
    code = "not_supported"


def _consul_response(request: web.Request, body: Any, index: int | None = None) -> web.Response:
    """JSON with the headers every Consul read answer carries."""
    response = json_response(body)
    shown = request.app[REGISTRY].index if index is None else index
    response.headers["X-Consul-Index"] = str(max(shown, 1))  # 0 makes clients spin
    response.headers["X-Consul-KnownLeader"] = "true"
    response.headers["X-Consul-LastContact"] = "0"
    return response


def _node_id(address: str) -> str:
    """A stable node ID per address, in Consul's UUID form."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, address))


def _check_datacenter(request: web.Request) -> None:
    dc = request.query.get("dc")
    if dc is not None and dc != DATACENTER:
        raise BadRequest(
            f"no datacenter {dc!r}: this catalog is the one datacenter {DATACENTER!r}",
            field="dc",
            code="unknown_datacenter",
        )


def _filter(request: web.Request, fields: dict[str, Any]) -> Callable[[Any], bool] | None:
    text = request.query.get("filter")
    if text is None:
        return None
    try:
        return compile_filter(text, fields)
    except FilterError as exc:
        raise BadRequest(str(exc), field="filter", code="invalid_filter") from None


async def _block_on_name(request: web.Request, name: str) -> int:
    """A blocking query on one service: wakes when that service's entries change."""
    _check_datacenter(request)
    registry = request.app[REGISTRY]
    index = index_of(request)
    if index is not None:
        await registry.wait_name(name, index, wait_of(request))
    return registry.name_index(name)


async def _block_on_all(request: web.Request) -> None:
    """A blocking query on the whole catalog: wakes when the registry's index passes the
    one given. We show an empty registry's index 0 as 1 (0 makes clients spin), so a 1
    given back while the index is 0 waits for the first change instead of answering at
    once (which would have the client spin all the same)."""
    wanted = index_of(request)
    if wanted is None:
        return
    registry = request.app[REGISTRY]
    if wanted == 1 and registry.index == 0:
        wanted = 0
    await registry.wait(wanted, wait_of(request))


def _instances(request: web.Request) -> list[Record]:
    tags = request.query.getall("tag", [])
    return request.app[REGISTRY].query(tags=tags, name=request.match_info["name"])


# --- /v1/catalog -----------------------------------------------------------------------


async def catalog_services(request: web.Request) -> web.Response:
    """`{name: [tags]}`, each name with the union of its instances' tags; with `filter=`,
    the names with at least one instance the filter holds for."""
    _check_datacenter(request)
    keep = _filter(request, CATALOG_SERVICE_FIELDS)
    await _block_on_all(request)
    registry = request.app[REGISTRY]
    if keep is None:
        return _consul_response(request, registry.names())
    body: dict[str, list[str]] = {}
    for record in registry.query():
        if keep(_catalog_entry(request, record)):
            tags = body.setdefault(record.name, [])
            tags += [t for t in record.tags if t not in tags]
    return _consul_response(request, dict(sorted(body.items())))


async def catalog_service(request: web.Request) -> web.Response:
    """The instances of one service as Consul CatalogService objects; `?tag=`, `filter=`."""
    keep = _filter(request, CATALOG_SERVICE_FIELDS)
    name = request.match_info["name"]
    index = await _block_on_name(request, name)
    entries = [_catalog_entry(request, record) for record in _instances(request)]
    return _consul_response(request, _kept(entries, keep), index)


def _catalog_entry(request: web.Request, record: Record) -> dict[str, Any]:
    created, modified = request.app[REGISTRY].indexes(record.id)
    return {
        "ID": _node_id(record.address),
        "Node": record.address,
        "Address": record.address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {},
        "NodeMeta": {},
        "ServiceID": record.id,
        "ServiceName": record.name,
        "ServiceAddress": record.address,
        "ServicePort": record.port,
        "ServiceTags": list(record.tags),
        "ServiceMeta": dict(record.meta),
        "ServiceWeights": WEIGHTS,
        "ServiceEnableTagOverride": False,
        "CreateIndex": created,
        "ModifyIndex": modified,
    }


def _kept(entries: Iterable[dict[str, Any]], keep: Callable[[Any], bool] | None) -> list[Any]:
    return [entry for entry in entries if keep is None or keep(entry)]


# --- /v1/health ------------------------------------------------------------------------


async def health_service(request: web.Request) -> web.Response:
    """Instances with their node and checks; `?passing` keeps passing ones, `?tag=` and
    `filter=` filter."""
    passing_only = parse_bool(request, "passing")
    keep = _filter(request, HEALTH_SERVICE_FIELDS)
    name = request.match_info["name"]
    index = await _block_on_name(request, name)
    entries = (
        _service_entry(request, record)
        for record in _instances(request)
        if not passing_only or record.status is Status.PASSING
    )
    return _consul_response(request, _kept(entries, keep), index)


def _service_entry(request: web.Request, record: Record) -> dict[str, Any]:
    created, modified = request.app[REGISTRY].indexes(record.id)
    node = record.address
    checks = []
    if record.check is not None:
        last = record.last_check
        checks.append(
            {
                "Node": node,
                "CheckID": f"service:{record.id}",
                "Name": f"Service '{record.name}' check",
                "Status": CONSUL_STATUS[record.status],
                "Notes": "",
                "Output": last.output if last else "not checked yet",
                "ServiceID": record.id,
                "ServiceName": record.name,
                "ServiceTags": list(record.tags),
                "Type": "http",
                "Interval": format_duration(record.check.interval),
                "Timeout": format_duration(record.check.timeout_s),
                "CreateIndex": created,
                "ModifyIndex": modified,
            }
        )
    return {
        "Node": {
            "ID": _node_id(node),
            "Node": node,
            "Address": node,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {},
            "Meta": {},
            "CreateIndex": created,
            "ModifyIndex": modified,
        },
        "Service": {
            "ID": record.id,
            "Service": record.name,
            "Tags": list(record.tags),
            "Address": record.address,
            "Meta": dict(record.meta),
            "Port": record.port,
            "Weights": WEIGHTS,
            "EnableTagOverride": False,
            "CreateIndex": created,
            "ModifyIndex": modified,
        },
        "Checks": checks,
    }


# --- /v1/agent/self, /v1/status --------------------------------------------------------


async def agent_self(request: web.Request) -> web.Response:
    """The little of Consul's agent description that clients read: the datacenter.

    Prometheus' consul_sd asks for it when its config names no datacenter.
    """
    name = socket.gethostname()
    return _consul_response(
        request,
        {
            "Config": {"Datacenter": DATACENTER, "NodeName": name, "Server": True},
            "Member": {"Name": name, "Tags": {"dc": DATACENTER}},
        },
    )


async def status_leader(request: web.Request) -> web.Response:
    """Some clients ask who leads before anything else: this master answers for itself."""
    return _consul_response(request, request.host)


async def not_supported(request: web.Request) -> web.Response:
    await refuse_other_methods(request, not_supported)
    raise NotSupported(
        f"read-only catalog: not supported: {request.method} {request.path} (this is a "
        "PicoAPI master: it serves the catalog and health views, not agent writes, KV, "
        "sessions or ACLs)"
    )


# --- /v1/prometheus/targets ------------------------------------------------------------


async def prometheus_targets(request: web.Request) -> web.Response:
    """The registry as Prometheus `http_sd_configs` target groups, one per instance."""
    tags = request.query.getall("tag", [])
    name = request.query.get("name")
    status = parse_status(request)
    await block(request)
    records = request.app[REGISTRY].query(tags=tags, name=name, status=status)
    return json_response([_target_group(record) for record in records])


def _target_group(record: Record) -> dict[str, Any]:
    """One instance: its target (the metrics port from `meta.metrics_port` when given),
    `__scheme__`, `__metrics_path__` (from `meta.metrics_path`) and its own labels."""
    host = record.address
    if ":" in host and not host.startswith("["):  # an IPv6 address needs its brackets
        host = f"[{host}]"
    port = record.meta.get(METRICS_PORT_META, str(record.port))
    labels = {
        "__scheme__": record.scheme,
        f"{META_LABEL_PREFIX}service": record.name,
        f"{META_LABEL_PREFIX}id": record.id,
        f"{META_LABEL_PREFIX}status": record.status.value,
        # Leading and trailing commas, as consul_sd does, so `.*,tag,.*` matches a whole tag.
        f"{META_LABEL_PREFIX}tags": "," + ",".join(record.tags) + ",",
        f"{META_LABEL_PREFIX}address": record.address,
        f"{META_LABEL_PREFIX}port": str(record.port),
        f"{META_LABEL_PREFIX}scheme": record.scheme,
    }
    if METRICS_PATH_META in record.meta:
        labels["__metrics_path__"] = record.meta[METRICS_PATH_META]
    for key, value in sorted(record.meta.items()):
        labels[f"{META_LABEL_PREFIX}meta_{_NOT_IN_LABEL_RE.sub('_', key)}"] = value
    return {"targets": [f"{host}:{port}"], "labels": labels}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/catalog/services", catalog_services)
    app.router.add_get("/v1/catalog/service/{name}", catalog_service)
    app.router.add_get("/v1/health/service/{name}", health_service)
    app.router.add_get("/v1/agent/self", agent_self)
    app.router.add_get("/v1/status/leader", status_leader)
    app.router.add_get("/v1/prometheus/targets", prometheus_targets)


def add_fallbacks(app: web.Application) -> None:
    """The Consul routes not served, each a clear 501; added after every served route
    (here and in other modules: /v1/catalog/apis), which are matched first."""
    for path in NOT_SERVED:
        app.router.add_route("*", path, not_supported)
