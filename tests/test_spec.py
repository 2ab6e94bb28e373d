"""The master's own OpenAPI document: every route served is described, and answers fit it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from master import consul
from master.app import build_app
from master.auth import Auth
from master.spec import SPEC
from master.store.memory import MemoryStore

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PARAM_RE = re.compile(r"\{([^}]+)\}")


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route; aiohttp adds HEAD to each GET by itself."""
    routes = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        if route.handler is consul.not_supported:
            continue  # Consul's routes we only refuse (501): no part of this API
        assert route.resource is not None
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.resource.canonical)
        routes.add((route.method.lower(), path))
    return routes


def described_routes() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in METHODS
    }


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = SPEC
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def walk_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in walk_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in walk_refs(value)]
    return []


def test_every_served_route_is_described_and_every_described_route_served() -> None:
    served = served_routes(build_app(MemoryStore(), Auth(None, None)))
    described = described_routes()
    assert served - described == set(), "served but missing from master/spec.py"
    assert described - served == set(), "described in master/spec.py but not served"


def test_the_document_is_structurally_sound() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    assert SPEC["info"]["title"] and SPEC["info"]["version"]
    assert SPEC["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for ref in walk_refs(SPEC):
        assert resolve(ref) is not None, ref
    operation_ids = []
    for path, item in SPEC["paths"].items():
        shared = [resolve(p["$ref"]) if "$ref" in p else p for p in item.get("parameters", [])]
        for method, operation in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            assert operation["responses"], where
            assert "200" in operation["responses"], where
            for answer in operation["responses"].values():
                answer = resolve(answer["$ref"]) if "$ref" in answer else answer
                assert answer["description"], where
                assert "X-Picoapi-Index" in answer["headers"], where
            operation_ids.append(operation["operationId"])
            params = shared + [
                resolve(p["$ref"]) if "$ref" in p else p for p in operation.get("parameters", [])
            ]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == set(PARAM_RE.findall(path)), where
            assert all(p["required"] for p in params if p["in"] == "path"), where
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_query_parameters_and_writes_are_described() -> None:
    params = SPEC["components"]["parameters"]
    assert params["tag"]["schema"]["type"] == "array" and params["tag"]["explode"] is True
    assert params["status"]["schema"]["enum"] == [  # contract 6: draining too
        "passing", "warning", "critical", "unknown", "draining"
    ]  # fmt: skip
    for name in ("name", "openapi", "index", "wait"):
        assert params[name]["in"] == "query", name
    listing = SPEC["paths"]["/v1/services"]["get"]["parameters"]
    assert {resolve(p["$ref"])["name"] for p in listing} == {
        "tag", "name", "status", "openapi", "index", "wait",
    }  # fmt: skip
    for path, method in (("/v1/services/{id}", "put"), ("/v1/services/{id}", "delete"),
                         ("/register", "put"), ("/register", "get")):  # fmt: skip
        assert SPEC["paths"][path][method]["security"] == [{"bearer": []}], (method, path)


# --- answers against the schemas -------------------------------------------------------


def validator(schema_name: str) -> Draft202012Validator:
    root = {"components": SPEC["components"], "$ref": f"#/components/schemas/{schema_name}"}
    return Draft202012Validator(root)


def fits(schema: dict[str, Any], value: Any) -> None:
    root = {"components": SPEC["components"], **schema}
    Draft202012Validator(root).validate(value)


def response_schema(path: str, method: str = "get", code: str = "200") -> dict[str, Any]:
    answer = SPEC["paths"][path][method]["responses"][code]
    answer = resolve(answer["$ref"]) if "$ref" in answer else answer
    return answer["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


@pytest.fixture
async def master() -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(build_app(MemoryStore(), Auth(None, None)))
    )
    await client.start_server()
    yield client
    await client.close()


REGISTRATION = {
    "id": "web-1",
    "name": "web",
    "address": "127.0.0.1",
    "port": 8080,
    "tags": ["v1"],
    "meta": {"team": "data"},
    "check": {"url": "http://127.0.0.1:1/health", "interval": "1h", "timeout": "2s"},
    "openapi": {"openapi": "3.0.3", "info": {"title": "web", "version": "1"}, "paths": {}},
}
PICOAPI = {
    "name": "Example Service",
    "tags": [""],
    "host": "127.0.0.1",
    "port": "8888",
    "healthcheck": {"url": "http://127.0.0.1:8888/health", "interval": "300"},
}


async def test_real_answers_fit_the_described_schemas(master: TestClient[Any, Any]) -> None:
    validator("Registration").validate(REGISTRATION)
    validator("PicoapiRegistration").validate(PICOAPI)
    put = await master.put("/v1/services/web-1", json=REGISTRATION)
    fits(response_schema("/v1/services/{id}", "put"), await put.json())
    assert (await master.put("/register", json=PICOAPI)).status == 200
    for path, described in (
        ("/v1/services", "/v1/services"),
        ("/v1/services?openapi=true", "/v1/services"),
        ("/v1/services/web-1", "/v1/services/{id}"),
        ("/v1/tags", "/v1/tags"),
        ("/healthz", "/healthz"),
        ("/services/status", "/services/status"),
        ("/services/definition", "/services/definition"),
        ("/v1/catalog/services", "/v1/catalog/services"),
        ("/v1/catalog/service/web", "/v1/catalog/service/{name}"),
        ("/v1/health/service/web", "/v1/health/service/{name}"),
        ("/v1/prometheus/targets", "/v1/prometheus/targets"),
        ("/v1/agent/self", "/v1/agent/self"),
        ("/openapi.json", "/openapi.json"),
    ):
        answer = await master.get(path)
        assert answer.status == 200, path
        fits(response_schema(described), await answer.json())
    missing = await master.get("/v1/services/nope")
    assert missing.status == 404
    fits(response_schema("/v1/services/{id}", code="404"), await missing.json())
    bad = await master.get("/v1/services?status=sick")
    fits(response_schema("/v1/services", code="400"), await bad.json())


async def test_the_document_is_served(master: TestClient[Any, Any]) -> None:
    answer = await master.get("/openapi.json")
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert await answer.json() == SPEC
