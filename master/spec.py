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

# No control characters (the master also refuses invisible and direction-changing ones).
PRINTABLE: Final = "^[^\\u0000-\\u001f\\u007f]+$"

SCHEMAS: Final[dict[str, Any]] = {
    **MODEL_SCHEMAS,
    "TagCounts": {"type": "object", "additionalProperties": {"type": "integer"}},
    "History": {
        "type": "object",
        "required": ["history"],
        "properties": {"history": {"type": "array", "items": _ref("Transition")}},
    },
    "OpenAPIDocument": {
        "type": "object",
        "description": "a service's OpenAPI document (OpenAPI 3 or Swagger 2)",
        "anyOf": [{"required": ["openapi"]}, {"required": ["swagger"]}],
    },
    "PicoapiRegistration": _object(
        ["name", "host", "port"],
        name={
            "type": "string",
            "minLength": 1,
            "maxLength": META_VALUE_MAX,
            "pattern": PRINTABLE,
            "description": "any printable text; the service's name and id are its slug",
        },
        tags={
            "type": ["array", "null"],
            "items": {"type": "string"},
            "description": "empty strings are dropped",
        },
        host={"type": "string", "minLength": 1, "pattern": PRINTABLE},
        port={
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^[0-9]{1,5}$", "description": "1..65535"},
            ]
        },
        metadata={
            "type": ["object", "null"],
            "propertyNames": {"minLength": 1, "pattern": PRINTABLE},
            "description": "non-string values are stored as their JSON text",
        },
        healthcheck={
            "oneOf": [
                _object(
                    ["url"],
                    url={"type": "string", "format": "uri", "pattern": "^https?://"},
                    interval={
                        "oneOf": [
                            {"type": "number", "minimum": 1, "maximum": 3600},
                            {"type": "string", "description": "seconds (1..3600), or 10s"},
                            {"type": "null"},
                        ],
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
    "ApiCatalog": _object(
        ["index", "apis"],
        index={
            "type": "integer",
            "description": "the registry index; with `name=`, the index of that name's last change",
        },
        apis={"type": "array", "items": _ref("ApiCatalogEntry")},
    ),
    "ApiCatalogEntry": _object(
        [
            "name",
            "instances",
            "documents",
            "without_document",
            "baseline",
            "baseline_rule",
            "diffs",
            "summary",
        ],
        name={"type": "string"},
        instances={
            "type": "integer",
            "description": "instances of the name, with or without a document",
        },
        documents={
            "type": "array",
            "minItems": 1,
            "description": "the distinct documents, the baseline first",
            "items": _object(
                ["sha256", "title", "version", "label", "bytes", "instances", "baseline"],
                sha256={"type": "string"},
                title={"type": "string", "description": "info.title, as printable text"},
                version={"type": "string", "description": "info.version, as printable text"},
                label={"type": "string", "description": "the version, with a short sha if shared"},
                bytes={"type": "integer"},
                instances=STRINGS,
                baseline={"type": "boolean"},
            ),
        },
        without_document=STRINGS,
        baseline={"type": "string", "description": "the sha256 the others are compared with"},
        baseline_rule={"enum": ["highest info.version", "newest registration"]},
        diffs={"type": "array", "items": _ref("ApiDiff")},
        summary={
            "type": "string",
            "description": "'2 of 5 instances on 1.5.0; 1 breaking change: DELETE /items removed'",
        },
    ),
    "ApiDiff": _object(
        [
            "from",
            "to",
            "from_version",
            "to_version",
            "compared",
            "not_compared_because",
            "breaking",
            "changes",
            "changes_left_off",
        ],
        **{"from": {"type": "string", "description": "sha256 of the older document"}},
        to={"type": "string", "description": "sha256 of the baseline"},
        from_version={"type": "string"},
        to_version={"type": "string"},
        compared={"type": "boolean"},
        not_compared_because={"type": ["string", "null"]},
        breaking={"type": "integer", "description": "how many changes are breaking"},
        changes={"type": "array", "items": _ref("ApiChange")},
        changes_left_off={"type": "integer"},
    ),
    "ApiChange": {
        "type": "object",
        "required": ["kind", "operation", "text", "breaking"],
        "properties": {
            "kind": {
                "enum": [
                    "operation_removed",
                    "operation_added",
                    "parameter_removed",
                    "parameter_added",
                    "parameter_required_changed",
                    "body_required_changed",
                    "body_field_required_changed",
                ]
            },
            "operation": {"type": "string", "description": "METHOD /path"},
            "text": {"type": "string"},
            "breaking": {
                "type": "boolean",
                "description": "a removal, or an input newly required",
            },
            "parameter": _object(
                ["in", "name"], name={"type": "string"}, **{"in": {"type": "string"}}
            ),
            "field": {"type": "string", "description": "a request body field"},
            "required": {"type": "boolean", "description": "required after the change"},
        },
    },
    "ServicePageFragment": _object(
        ["index", "found", "title", "sections", "keys"],
        index={"type": "integer", "description": "pass it back as index= to wait for a change"},
        found={"type": "boolean"},
        title={"type": "string"},
        sections={
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "section name -> its HTML, rendered (and escaped) by the master",
        },
        keys={"type": "object", "additionalProperties": {"type": "string"}},
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
    "dashboardAsset": {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"enum": ["app.js", "service.js", "api.js", "shared.js", "style.css"]},
    },
    "swaggerAsset": {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"enum": ["swagger-ui-bundle.js", "swagger-ui.css"]},
    },
    "search": {
        "name": "q",
        "in": "query",
        "description": "the list shows services whose name or id holds this text",
        "schema": {"type": "string"},
    },
    "pageStatus": {
        "name": "status",
        "in": "query",
        "description": "the list shows services of this status (another value: all)",
        "schema": {"type": "string"},
    },
    "fragment": {
        "name": "fragment",
        "in": "query",
        "description": "answer the page's sections as JSON (any value); with index=, a "
        "blocking request that waits for a change of the service's name (20 s unless wait=)",
        "schema": {"type": "string"},
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

# A page for an id not registered says so, as a page (404); a path the page's route does
# not take (an id with a slash) is the API's own 404.
PAGE_NOT_FOUND: Final = {
    **_answer("no service with this id (the page says so)", {"type": "string"}),
    "content": {
        "text/html": {"schema": {"type": "string"}},
        JSON: {"schema": _ref("Error")},
    },
}


def _page(operation: dict[str, Any]) -> dict[str, Any]:
    """A dashboard page: no token asked (it holds data only where reads are open), and a
    404 page for an id not registered."""
    responses = {**operation["responses"], "404": PAGE_NOT_FOUND}
    return {**operation, "responses": responses, "security": OPEN}


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
    "/v1/catalog/apis": {
        "get": _get(
            "listApis",
            "The OpenAPI documents of each service name, and how its instances' differ",
            "registry",
            _answer("per name: documents, instances, diffs, summary", _ref("ApiCatalog")),
            "name",
            *BLOCKING,
        )
    },
    "/": {
        "get": {
            **_get(
                "dashboard",
                "The dashboard: the list of services (rendered with data where reads are open)",
                "dashboard",
                _answer("an HTML page", {"type": "string"}, media=("text/html",)),
                "search",
                "tag",
                "pageStatus",
                errors=(),
            ),
            "security": OPEN,
        }
    },
    "/dashboard/services/{id}": {
        "parameters": _params("id"),
        "get": _page(
            _get(
                "dashboardService",
                "A service's page; with fragment=, its sections as JSON (a read token where "
                "reads need one)",
                "dashboard",
                {
                    **_answer("the page", {"type": "string"}, media=("text/html",)),
                    "content": {
                        "text/html": {"schema": {"type": "string"}},
                        JSON: {"schema": _ref("ServicePageFragment")},
                    },
                },
                "fragment",
                *BLOCKING,
                errors=("400", "401"),
            )
        ),
    },
    "/dashboard/services/{id}/api": {
        "parameters": _params("id"),
        "get": _page(
            _get(
                "dashboardServiceApi",
                "A service's OpenAPI document as browsable docs (Swagger UI, served here)",
                "dashboard",
                _answer("the page", {"type": "string"}, media=("text/html",)),
                errors=(),
            )
        ),
    },
    "/dashboard/vendor/swagger-ui/{name}": {
        "get": {
            **_get(
                "dashboardSwaggerUi",
                "The pinned copy of Swagger UI the API docs are rendered with",
                "dashboard",
                _answer("the file", {"type": "string"}, media=("text/javascript", "text/css")),
                "swaggerAsset",
                errors=("404",),
            ),
            "security": OPEN,
        }
    },
    "/dashboard/{name}": {
        "get": {
            **_get(
                "dashboardAsset",
                "The dashboard's scripts and style",
                "dashboard",
                _answer("the file", {"type": "string"}, media=("text/javascript", "text/css")),
                "dashboardAsset",
                errors=("404",),
            ),
            "security": OPEN,
        }
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
