"""`GET /openapi.json`: the master's own OpenAPI 3.1 description of every route it serves.

Built once at import, as a dict, and encoded once; tests/test_spec.py checks that it names
exactly the routes the app serves and that real answers match its schemas.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from master.api import raw_json_response
from master.model import (
    META_VALUE_MAX,
    Status,
    encode,
    json_schemas,
    loads_json,
)

JSON: Final = "application/json"
DURATION: Final = {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h))+$|^0$"}
TIME: Final = {"type": "string", "format": "date-time"}
STATUS: Final = {"type": "string", "enum": [s.value for s in Status]}
STRINGS: Final = {"type": "array", "items": {"type": "string"}}
STRING_MAP: Final = {"type": "object", "additionalProperties": {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _params(*names: str) -> list[dict[str, str]]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _answer(
    description: str,
    schema: dict[str, Any] | None = None,
    *,
    media: tuple[str, ...] = (JSON,),
    consul: bool = False,
) -> dict[str, Any]:
    """A response; every answer carries X-Picoapi-Index, Consul's also X-Consul-Index."""
    headers = {"X-Picoapi-Index": {"$ref": "#/components/headers/Index"}}
    if consul:
        headers["X-Consul-Index"] = {"$ref": "#/components/headers/Index"}
    response: dict[str, Any] = {"description": description, "headers": headers}
    if schema is not None:
        response["content"] = {kind: {"schema": schema} for kind in media}
    return response


def _errors(*codes: str) -> dict[str, dict[str, Any]]:
    return {code: {"$ref": f"#/components/responses/{code}"} for code in codes}


def _get(
    operation_id: str,
    summary: str,
    tag: str,
    ok: dict[str, Any],
    *params: str,
    errors: tuple[str, ...] = ("400", "401"),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "responses": {"200": ok, **_errors(*errors)},
    }
    if params:
        operation["parameters"] = _params(*params)
    return operation


WRITE: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
OPEN: Final[list[dict[str, list[str]]]] = []  # liveness and metrics never ask for a token

# The wire model's schemas, read off its types (master.model), under the names this API
# has always published them by; the rest of SCHEMAS are the other clients' shapes.
_MODEL_NAMES: Final = {
    "RegistrationBody": "Registration",
    "CheckResult": "LastCheck",
    "ErrorAnswer": "Error",
}


def _model_schemas() -> dict[str, Any]:
    text = encode(json_schemas("#/components/schemas/{name}")).decode()
    for old, new in _MODEL_NAMES.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    schemas: dict[str, Any] = loads_json(text)
    return {_MODEL_NAMES.get(name, name): schema for name, schema in schemas.items()}


MODEL_SCHEMAS: Final = _model_schemas()
MODEL_SCHEMAS["Record"]["properties"].pop("history", None)  # served at .../history
MODEL_SCHEMAS["Record"]["properties"].update(
    create_index={"type": "integer", "description": "the revision that created the record"},
    modify_index={"type": "integer", "description": "the revision that last changed it"},
)
MODEL_SCHEMAS["Record"]["required"] = [
    *MODEL_SCHEMAS["Record"].get("required", []),
    "create_index",
    "modify_index",
]
MODEL_SCHEMAS["Record"]["properties"]["openapi"] = {
    "description": "only with ?openapi=true",
    "anyOf": [{"$ref": "#/components/schemas/OpenAPIDocument"}, {"type": "null"}],
}
ID_SCHEMA: Final = MODEL_SCHEMAS["Registration"]["properties"]["id"]

SCHEMAS: Final[dict[str, Any]] = {
    **MODEL_SCHEMAS,
    "TagCounts": {"type": "object", "additionalProperties": {"type": "integer"}},
    "History": {
        "type": "object",
        "required": ["history"],
        "properties": {"history": {"type": "array", "items": _ref("Transition")}},
    },
    "OpenAPIDocument": {"type": "object", "description": "a service's OpenAPI document"},
    "PicoapiRegistration": _object(
        ["name", "host", "port"],
        name={
            "type": "string",
            "maxLength": META_VALUE_MAX,
            "description": "any text; the service's name and id are its slug",
        },
        tags={
            "type": ["array", "null"],
            "items": {"type": "string"},
            "description": "empty strings are dropped",
        },
        host={"type": "string"},
        port={"type": ["integer", "string"], "description": "a string of digits also"},
        metadata={
            "type": ["object", "null"],
            "description": "non-string values are stored as their JSON text",
        },
        healthcheck={
            "oneOf": [
                _object(
                    ["url"],
                    url={"type": "string", "format": "uri"},
                    interval={
                        "type": ["number", "string", "null"],
                        "default": 30,
                        "description": "seconds",
                    },
                ),
                {"type": "null"},
            ]
        },
    ),
    "PicoapiStatus": {
        "type": "array",
        "items": _object(
            ["name", "status"],
            name={"type": "string"},
            status={"enum": ["healthy", "unhealthy", "No healthcheck!"]},
        ),
    },
    "PicoapiDefinitions": {
        "type": "array",
        "items": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": {"type": "object"},
            "description": 'name -> document, or {"status": "not running!"}',
        },
    },
    "ConsulCatalogService": _object(
        [
            "ID",
            "Node",
            "Address",
            "Datacenter",
            "ServiceID",
            "ServiceName",
            "ServiceAddress",
            "ServicePort",
            "ServiceTags",
            "ServiceMeta",
            "CreateIndex",
            "ModifyIndex",
        ],
        ID={"type": "string", "format": "uuid"},
        Node={"type": "string"},
        Address={"type": "string"},
        Datacenter={"type": "string"},
        TaggedAddresses=STRING_MAP,
        NodeMeta=STRING_MAP,
        ServiceID={"type": "string"},
        ServiceName={"type": "string"},
        ServiceAddress={"type": "string"},
        ServicePort={"type": "integer"},
        ServiceTags=STRINGS,
        ServiceMeta=STRING_MAP,
        ServiceWeights={"type": "object"},
        ServiceEnableTagOverride={"type": "boolean"},
        CreateIndex={"type": "integer"},
        ModifyIndex={"type": "integer"},
    ),
    "ConsulServiceEntry": _object(
        ["Node", "Service", "Checks"],
        Node=_object(
            ["ID", "Node", "Address", "Datacenter"],
            ID={"type": "string"},
            Node={"type": "string"},
            Address={"type": "string"},
            Datacenter={"type": "string"},
        ),
        Service=_object(
            ["ID", "Service", "Tags", "Address", "Port", "Meta"],
            ID={"type": "string"},
            Service={"type": "string"},
            Tags=STRINGS,
            Address={"type": "string"},
            Port={"type": "integer"},
            Meta=STRING_MAP,
        ),
        Checks={
            "type": "array",
            "items": _object(
                ["Node", "CheckID", "Name", "Status", "Output", "ServiceID", "ServiceName"],
                Node={"type": "string"},
                CheckID={"type": "string"},
                Name={"type": "string"},
                Status={"enum": ["passing", "warning", "critical"]},
                Output={"type": "string"},
                ServiceID={"type": "string"},
                ServiceName={"type": "string"},
            ),
        },
    ),
    "PrometheusTargets": {
        "type": "array",
        "items": _object(
            ["targets", "labels"],
            targets={**STRINGS, "minItems": 1},
            labels={**STRING_MAP, "propertyNames": {"pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        ),
    },
}

PARAMETERS: Final = {
    "id": {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": MODEL_SCHEMAS["Registration"]["properties"]["id"],
    },
    "serviceName": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
    "asset": {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"enum": ["index.html", "app.js", "style.css"]},
    },
    "tag": {
        "name": "tag",
        "in": "query",
        "style": "form",
        "explode": True,
        "description": "repeatable; every tag must match",
        "schema": {"type": "array", "items": {"type": "string"}},
    },
    "name": {"name": "name", "in": "query", "schema": {"type": "string"}},
    "instance": {
        "name": "instance",
        "in": "query",
        "description": "remove only if this instance holds the id (a sidecar leaving)",
        "schema": {"type": "string", "maxLength": 255},
    },
    "status": {"name": "status", "in": "query", "schema": STATUS},
    "openapi": {
        "name": "openapi",
        "in": "query",
        "description": "include each document",
        "schema": {"type": "boolean", "default": False},
    },
    "passing": {
        "name": "passing",
        "in": "query",
        "allowEmptyValue": True,
        "description": "only passing instances",
        "schema": {"type": "boolean"},
    },
    "index": {
        "name": "index",
        "in": "query",
        "description": "blocking query: answer once the registry index passes this",
        "schema": {"type": "integer", "minimum": 0},
    },
    "wait": {
        "name": "wait",
        "in": "query",
        "description": "longest a blocking query waits; default and limit 5m",
        "schema": DURATION,
    },
}

ERROR_ANSWERS: Final = {
    code: _answer(description, _ref("Error"))
    for code, description in {
        "400": "bad JSON, a bad field or a bad query parameter (`field` names it)",
        "401": "the token is missing or wrong",
        "404": "not found",
        "409": "the id is held by another instance that is not critical (`id_conflict`)",
        "413": "the body is over the limit",
        "415": "the body is not JSON",
        "503": "the store could not commit the change; retry",
    }.items()
}

RECORD_ANSWER: Final = _answer("the record", _ref("Record"))
BLOCKING: Final = ("index", "wait")
CATALOG: Final = "consul"

PATHS: Final[dict[str, Any]] = {
    "/v1/services": {
        "get": _get(
            "listServices",
            "Registered services, filtered",
            "registry",
            _answer("the matching records", _ref("ServiceList")),
            "tag",
            "name",
            "status",
            "openapi",
            *BLOCKING,
        )
    },
    "/v1/services/{id}": {
        "parameters": _params("id"),
        "put": {
            "operationId": "putService",
            "summary": "Register or replace a service",
            "tags": ["registry"],
            "security": WRITE,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Registration")}}},
            "responses": {
                "200": RECORD_ANSWER,
                **_errors("400", "401", "409", "413", "415", "503"),
            },
        },
        "get": _get(
            "getService",
            "One service",
            "registry",
            RECORD_ANSWER,
            *BLOCKING,
            errors=("400", "401", "404"),
        ),
        "delete": {
            "operationId": "deleteService",
            "summary": "Deregister a service",
            "tags": ["registry"],
            "security": WRITE,
            "parameters": _params("instance"),
            "responses": {
                "200": _answer("the removed record", _ref("Record")),
                **_errors("400", "401", "404", "409", "503"),
            },
        },
    },
    "/v1/services/{id}/openapi": {
        "parameters": _params("id"),
        "get": _get(
            "getServiceOpenapi",
            "A service's OpenAPI document",
            "registry",
            _answer("the document", _ref("OpenAPIDocument")),
            errors=("401", "404"),
        ),
    },
    "/v1/services/{id}/history": {
        "parameters": _params("id"),
        "get": _get(
            "getServiceHistory",
            "A service's last status changes, oldest first",
            "registry",
            _answer("the timeline", _ref("History")),
            errors=("401", "404"),
        ),
    },
    "/v1/tags": {
        "get": _get(
            "listTags",
            "Every tag with the number of services holding it",
            "registry",
            _answer("tag -> count", _ref("TagCounts")),
            *BLOCKING,
        )
    },
    "/v1/catalog/services": {
        "get": _get(
            "consulCatalogServices",
            "Consul: each service name with its tags",
            CATALOG,
            _answer(
                "name -> tags", {"type": "object", "additionalProperties": STRINGS}, consul=True
            ),
            *BLOCKING,
        )
    },
    "/v1/catalog/service/{name}": {
        "get": _get(
            "consulCatalogService",
            "Consul: the instances of one service",
            CATALOG,
            _answer(
                "CatalogService objects",
                {"type": "array", "items": _ref("ConsulCatalogService")},
                consul=True,
            ),
            "serviceName",
            "tag",
            *BLOCKING,
        )
    },
    "/v1/health/service/{name}": {
        "get": _get(
            "consulHealthService",
            "Consul: the instances of one service with their checks",
            CATALOG,
            _answer(
                "service entries",
                {"type": "array", "items": _ref("ConsulServiceEntry")},
                consul=True,
            ),
            "serviceName",
            "tag",
            "passing",
            *BLOCKING,
        )
    },
    "/v1/agent/self": {
        "get": _get(
            "consulAgentSelf",
            "Consul: the agent's datacenter, for clients that ask",
            CATALOG,
            _answer("Config and Member", {"type": "object"}, consul=True),
            errors=("401",),
        )
    },
    "/v1/status/leader": {
        "get": _get(
            "consulStatusLeader",
            "Consul: the leader's address (this master answers for itself)",
            CATALOG,
            _answer("host:port", {"type": "string"}, consul=True),
            errors=("401",),
        )
    },
    "/v1/prometheus/targets": {
        "get": _get(
            "prometheusTargets",
            "The registry as Prometheus http_sd target groups",
            "prometheus",
            _answer("target groups", _ref("PrometheusTargets")),
            "tag",
            "name",
            "status",
            *BLOCKING,
        )
    },
    "/register": {
        method: {
            "operationId": f"picoapiRegister{method.title()}",
            "summary": "picoapi 1.0.4: register or replace a service (id = its name)",
            "tags": ["picoapi"],
            "security": WRITE,
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _ref("PicoapiRegistration")}},
            },
            "responses": {
                "200": _answer("registered; null, as picoapi answered", {"type": "null"}),
                **_errors("400", "401", "413", "415", "503"),
            },
        }
        for method in ("put", "get")
    },
    "/services/status": {
        "get": _get(
            "picoapiStatus",
            "picoapi 1.0.4: every service's health",
            "picoapi",
            _answer("name and status", _ref("PicoapiStatus")),
            errors=("401",),
        )
    },
    "/services/definition": {
        "get": _get(
            "picoapiDefinition",
            "picoapi 1.0.4: every service's OpenAPI document",
            "picoapi",
            _answer("name -> document", _ref("PicoapiDefinitions")),
            errors=("401",),
        )
    },
    "/healthz": {
        "get": {
            **_get(
                "healthz",
                "The master's own liveness",
                "master",
                _answer("alive", _ref("Health")),
                errors=(),
            ),
            "security": OPEN,
        }
    },
    "/metrics": {
        "get": {
            **_get(
                "metrics",
                "Prometheus metrics of the master",
                "master",
                _answer("Prometheus text", {"type": "string"}, media=("text/plain",)),
                errors=(),
            ),
            "security": OPEN,
        }
    },
    "/openapi.json": {
        "get": _get(
            "openapi",
            "This document",
            "master",
            _answer("OpenAPI 3.1", {"type": "object"}),
            errors=("401",),
        )
    },
    "/": {
        "get": _get(
            "dashboard",
            "The dashboard",
            "dashboard",
            _answer("an HTML page", {"type": "string"}, media=("text/html",)),
            errors=("401",),
        )
    },
    "/dashboard/{name}": {
        "get": _get(
            "dashboardAsset",
            "The dashboard's script and style",
            "dashboard",
            _answer("the file", {"type": "string"}, media=("text/javascript", "text/css")),
            "asset",
            errors=("401", "404"),
        )
    },
}

SPEC: Final = {
    "openapi": "3.1.0",
    "info": {
        "title": "picoapi master",
        "version": "1",
        "description": "The service registry. Writes need `Authorization: Bearer <token>` when "
        "the master has tokens; reads may need a read token.",
    },
    # Reads are open unless the master is given a read token.
    "security": [{}, {"bearer": []}],
    "tags": [
        {"name": n} for n in ("registry", CATALOG, "prometheus", "picoapi", "master", "dashboard")
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "responses": ERROR_ANSWERS,
        "headers": {
            "Index": {
                "description": "the registry index this answer reflects",
                "schema": {"type": "integer"},
            }
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}
SPEC_TEXT: Final = encode(SPEC)


async def openapi(request: web.Request) -> web.Response:
    return raw_json_response(SPEC_TEXT)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi)
