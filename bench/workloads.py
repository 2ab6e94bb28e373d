"""The requests each case sends, built from a small JSON spec so the load generator (its
own process) and the orchestrator agree on them without shipping 10,000 bodies around.

A spec is `{"kind": ..., "n": ..., ...}`; `build(spec)` returns (method, path, body) triples.
"""

from __future__ import annotations

import json
from typing import Any, Final

Request = tuple[str, str, bytes | None]

CLOSED_PORT: Final = 9  # discard: nothing listens on it here; a check there is refused
GROUPS: Final = 1000  # tag grp-K is on services K, K+1000, ...: 10 of 10,000 match each


def registration(
    i: int, check_url: str, interval: str = "1h", timeout: str = "2s"
) -> dict[str, Any]:
    """What a sidecar PUTs: the contract's example, one service of many."""
    return {
        "id": f"svc-{i}",
        "name": f"svc-{i % 100}",
        "address": "127.0.0.1",
        "port": 20000 + i % 40000,
        "scheme": "http",
        "tags": [f"grp-{i % GROUPS}", "bench", f"zone-{i % 3}"],
        "meta": {"team": "data", "version": "1.4.2"},
        "check": {
            "url": check_url,
            "interval": interval,
            "timeout": timeout,
            "failures_before_critical": 1,
            "successes_before_passing": 1,
            "deregister_after": "0",
        },
    }


def openapi_document(i: int) -> dict[str, Any]:
    """A small but real OpenAPI document (about 1.6 KB of JSON): five operations."""
    paths: dict[str, Any] = {}
    for name in ("items", "orders", "users", "search", "stats"):
        paths[f"/{name}"] = {
            "get": {
                "summary": f"List {name} of service {i}",
                "operationId": f"list_{name}",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {"application/json": {"schema": {"type": "array"}}},
                    }
                },
            }
        }
    return {"openapi": "3.0.3", "info": {"title": f"svc-{i}", "version": "1.0.0"}, "paths": paths}


def picoapi_body(i: int, health_url: str | None, interval: int = 10) -> dict[str, Any]:
    """What a picoapi 1.0.4 service sends (`register_uservice`): strings from env vars."""
    return {
        "name": f"svc-{i}",
        "tags": [f"grp-{i % GROUPS}", "bench", f"zone-{i % 3}"],
        "host": "127.0.0.1",
        "port": str(20000 + i % 40000),
        "metadata": None,
        "healthcheck": None if health_url is None else {"url": health_url, "interval": interval},
    }


def check_url(i: int, spec: dict[str, Any]) -> str:
    """Where service i's check points: far away (never due in the run) or at the swarm."""
    ports: list[int] = spec.get("swarm_ports") or []
    if not ports:
        return f"http://127.0.0.1:{CLOSED_PORT}/health"
    if spec.get("faulty"):
        if i % 10 == 0:
            return f"http://127.0.0.1:{ports[i % len(ports)]}/hang/{i}"
        if i % 10 == 1:
            closed: list[int] = spec["closed_ports"]
            return f"http://127.0.0.1:{closed[i % len(closed)]}/health"
    return f"http://127.0.0.1:{ports[i % len(ports)]}/health/{i}"


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def build(spec: dict[str, Any]) -> list[Request]:
    kind = spec["kind"]
    first, n = int(spec.get("first", 0)), int(spec["n"])
    ids = range(first, first + n)
    if kind == "register":  # PUT /v1/services/{id}, also sent to the hello ceiling
        interval = spec.get("interval", "1h")
        timeout = spec.get("timeout", "2s")
        requests: list[Request] = []
        for i in ids:
            body = registration(i, check_url(i, spec), interval, timeout)
            if spec.get("openapi"):
                body["openapi"] = openapi_document(i)
            requests.append(("PUT", f"/v1/services/svc-{i}", _json(body)))
        return requests
    if kind == "picoapi":  # its master routes /register as GET, with the JSON body
        interval = int(spec.get("picoapi_interval", 10))
        return [
            (
                spec.get("method", "GET"),
                "/register",
                _json(picoapi_body(i, _picoapi_check(i, spec), interval)),
            )
            for i in ids
        ]
    if kind == "tag":
        groups = int(spec.get("groups", GROUPS))
        return [("GET", f"/v1/services?tag=grp-{(i * 7919) % groups}", None) for i in ids]
    if kind == "id":
        services = int(spec["services"])
        return [("GET", f"/v1/services/svc-{(i * 7919) % services}", None) for i in ids]
    if kind == "list":
        return [("GET", "/v1/services", None) for _ in ids]
    raise ValueError(f"unknown workload {kind!r}")


def _picoapi_check(i: int, spec: dict[str, Any]) -> str | None:
    if spec.get("no_healthcheck"):
        return None
    return check_url(i, spec)
