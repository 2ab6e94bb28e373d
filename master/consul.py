"""A read-only, Consul-compatible view of the registry, and Prometheus http_sd targets.

Tools that speak Consul (Prometheus `consul_sd_configs`, Traefik, consul-template, the
Go `consul/api` client) read the catalog from here unchanged: the field names are
Consul's, blocking queries take `index` and `wait`, and every answer carries the
`X-Consul-*` headers the Go client insists on (it fails without `X-Consul-LastContact`).

We have no nodes: each service's address stands in for the node it runs on, with a node
ID derived from it, in the one datacenter `dc1`. We keep no per-record raft index either,
so CreateIndex and ModifyIndex are the registry's index at the time of the answer.
"""

from __future__ import annotations

import re
import socket
import uuid
from typing import Any, Final

from aiohttp import web

from master.api import REGISTRY, block, json_response, parse_bool, parse_status
from master.model import Record, Status, format_duration

DATACENTER: Final = "dc1"
# Consul starts a new check critical; our "unknown" (not checked yet) means the same.
CONSUL_STATUS: Final = {
    Status.PASSING: "passing",
    Status.WARNING: "warning",
    Status.CRITICAL: "critical",
    Status.UNKNOWN: "critical",
}
WEIGHTS: Final = {"Passing": 1, "Warning": 1}
META_LABEL_PREFIX: Final = "__meta_picoapi_"
_NOT_IN_LABEL_RE: Final = re.compile(r"[^a-zA-Z0-9_]")


def _consul_response(request: web.Request, body: Any) -> web.Response:
    """JSON with the headers every Consul read answer carries."""
    response = json_response(body)
    response.headers["X-Consul-Index"] = str(request.app[REGISTRY].index)
    response.headers["X-Consul-KnownLeader"] = "true"
    response.headers["X-Consul-LastContact"] = "0"
    return response


def _node_id(address: str) -> str:
    """A stable node ID per address, in Consul's UUID form."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, address))


def _instances(request: web.Request) -> list[Record]:
    tags = request.query.getall("tag", [])
    return request.app[REGISTRY].query(tags=tags, name=request.match_info["name"])


# --- /v1/catalog -----------------------------------------------------------------------


async def catalog_services(request: web.Request) -> web.Response:
    """`{name: [tags]}`, each name with the union of its instances' tags."""
    await block(request)
    return _consul_response(request, request.app[REGISTRY].names())


async def catalog_service(request: web.Request) -> web.Response:
    """The instances of one service as Consul CatalogService objects; `?tag=` filters."""
    await block(request)
    index = request.app[REGISTRY].index
    body = []
    for record in _instances(request):
        registration = record
        body.append(
            {
                "ID": _node_id(registration.address),
                "Node": registration.address,
                "Address": registration.address,
                "Datacenter": DATACENTER,
                "TaggedAddresses": {},
                "NodeMeta": {},
                "ServiceID": registration.id,
                "ServiceName": registration.name,
                "ServiceAddress": registration.address,
                "ServicePort": registration.port,
                "ServiceTags": list(registration.tags),
                "ServiceMeta": dict(registration.meta),
                "ServiceWeights": WEIGHTS,
                "ServiceEnableTagOverride": False,
                "CreateIndex": index,
                "ModifyIndex": index,
            }
        )
    return _consul_response(request, body)


# --- /v1/health ------------------------------------------------------------------------


async def health_service(request: web.Request) -> web.Response:
    """Instances with their node and checks; `?passing` keeps passing ones, `?tag=` filters."""
    passing_only = parse_bool(request, "passing")
    await block(request)
    index = request.app[REGISTRY].index
    body = [
        _service_entry(record, index)
        for record in _instances(request)
        if not passing_only or record.status is Status.PASSING
    ]
    return _consul_response(request, body)


def _service_entry(record: Record, index: int) -> dict[str, Any]:
    registration = record
    node = registration.address
    checks = []
    if registration.check is not None:
        last = record.last_check
        checks.append(
            {
                "Node": node,
                "CheckID": f"service:{registration.id}",
                "Name": f"Service '{registration.name}' check",
                "Status": CONSUL_STATUS[record.status],
                "Notes": "",
                "Output": last.output if last else "not checked yet",
                "ServiceID": registration.id,
                "ServiceName": registration.name,
                "ServiceTags": list(registration.tags),
                "Type": "http",
                "Interval": format_duration(registration.check.interval),
                "Timeout": format_duration(registration.check.timeout_s),
                "CreateIndex": index,
                "ModifyIndex": index,
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
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Service": {
            "ID": registration.id,
            "Service": registration.name,
            "Tags": list(registration.tags),
            "Address": registration.address,
            "Meta": dict(registration.meta),
            "Port": registration.port,
            "Weights": WEIGHTS,
            "EnableTagOverride": False,
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Checks": checks,
    }


# --- /v1/agent/self --------------------------------------------------------------------


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
    registration = record
    host = registration.address
    if ":" in host and not host.startswith("["):  # an IPv6 address needs its brackets
        host = f"[{host}]"
    labels = {
        f"{META_LABEL_PREFIX}service": registration.name,
        f"{META_LABEL_PREFIX}id": registration.id,
        f"{META_LABEL_PREFIX}status": record.status.value,
        # Leading and trailing commas, as consul_sd does, so `.*,tag,.*` matches a whole tag.
        f"{META_LABEL_PREFIX}tags": "," + ",".join(registration.tags) + ",",
        f"{META_LABEL_PREFIX}address": registration.address,
        f"{META_LABEL_PREFIX}port": str(registration.port),
        f"{META_LABEL_PREFIX}scheme": registration.scheme,
    }
    for key, value in sorted(registration.meta.items()):
        labels[f"{META_LABEL_PREFIX}meta_{_NOT_IN_LABEL_RE.sub('_', key)}"] = value
    return {"targets": [f"{host}:{registration.port}"], "labels": labels}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/catalog/services", catalog_services)
    app.router.add_get("/v1/catalog/service/{name}", catalog_service)
    app.router.add_get("/v1/health/service/{name}", health_service)
    app.router.add_get("/v1/agent/self", agent_self)
    app.router.add_get("/v1/prometheus/targets", prometheus_targets)
