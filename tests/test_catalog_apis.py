"""`GET /v1/catalog/apis` over HTTP: which instances of a name serve which document, and
what changed between them, breaking changes marked, summed up in one line."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from master import catalog_apis
from master.app import build_app
from master.auth import Auth
from master.catalog_apis import safe_text, version_key
from master.spec import SPEC
from master.store.memory import MemoryStore

Client = TestClient[Any, Any]
OK = {"200": {"description": "ok"}}


def items(version: str, *, delete: bool = True, limit_required: bool = False) -> dict[str, Any]:
    limit = {"name": "limit", "in": "query", "required": limit_required}
    paths: dict[str, Any] = {
        "/items": {"get": {"parameters": [limit], "responses": OK}},
        "/items/{id}": {
            "get": {"parameters": [{"name": "id", "in": "path", "required": True}],
                    "responses": OK},
        },
    }  # fmt: skip
    if delete:
        paths["/items"]["delete"] = {"responses": OK}
    return {"openapi": "3.0.3", "info": {"title": "items", "version": version}, "paths": paths}


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    test_client: Client = TestClient(TestServer(build_app(MemoryStore(), Auth(None, None))))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def put(client: Client, ident: str, name: str, document: Any = None, **more: Any) -> None:
    body: dict[str, Any] = {"name": name, "address": "10.0.0.5", "port": 8080, **more}
    if document is not None:
        body["openapi"] = document
    answer = await client.put(f"/v1/services/{ident}", json=body)
    assert answer.status == 200, await answer.text()


async def catalog(client: Client, query: str = "") -> dict[str, Any]:
    answer = await client.get(f"/v1/catalog/apis{query}")
    assert answer.status == 200, await answer.text()
    body: dict[str, Any] = await answer.json()
    schema = {"components": SPEC["components"], "$ref": "#/components/schemas/ApiCatalog"}
    Draft202012Validator(schema).validate(body)  # what /openapi.json says it is
    return body


async def entry(client: Client, name: str) -> dict[str, Any]:
    body = await catalog(client, f"?name={name}")
    assert [e["name"] for e in body["apis"]] == [name]
    found: dict[str, Any] = body["apis"][0]
    return found


async def rollout(client: Client, new: dict[str, Any], old: dict[str, Any]) -> None:
    """Five instances of `items`: two serve `new`, three `old`."""
    for i in range(5):
        await put(client, f"items-{i}", "items", new if i < 2 else old, port=8080 + i)


async def test_a_rollout_that_removes_an_operation(client: Client) -> None:
    await rollout(client, items("1.5.0", delete=False), items("1.4.2"))
    found = await entry(client, "items")
    assert found["summary"] == "2 of 5 instances on 1.5.0; 1 breaking change: DELETE /items removed"
    new, old = found["documents"]
    assert (new["version"], new["instances"], new["baseline"]) == (
        "1.5.0", ["items-0", "items-1"], True,
    )  # fmt: skip
    assert (old["version"], old["instances"], old["baseline"]) == (
        "1.4.2", ["items-2", "items-3", "items-4"], False,
    )  # fmt: skip
    assert found["baseline"] == new["sha256"]
    assert found["baseline_rule"] == "highest info.version"
    (diff,) = found["diffs"]
    assert (diff["from"], diff["to"]) == (old["sha256"], new["sha256"])
    assert diff["breaking"] == 1
    assert diff["changes"] == [
        {
            "kind": "operation_removed",
            "operation": "DELETE /items",
            "text": "DELETE /items removed",
            "breaking": True,
        }
    ]


async def test_a_removed_operation_and_a_newly_required_parameter(client: Client) -> None:
    await rollout(client, items("1.5.0", delete=False, limit_required=True), items("1.4.2"))
    found = await entry(client, "items")
    (diff,) = found["diffs"]
    assert diff["breaking"] == 2
    assert diff["changes"] == [
        {
            "kind": "operation_removed",
            "operation": "DELETE /items",
            "text": "DELETE /items removed",
            "breaking": True,
        },
        {
            "kind": "parameter_required_changed",
            "operation": "GET /items",
            "text": "GET /items: query parameter 'limit' now required",
            "breaking": True,
            "parameter": {"in": "query", "name": "limit"},
            "required": True,
        },
    ]
    assert found["summary"] == (
        "2 of 5 instances on 1.5.0; 2 breaking changes: DELETE /items removed, "
        "GET /items: query parameter 'limit' now required"
    )


async def test_additions_are_not_breaking_and_renamed_path_parameters_are_no_change(
    client: Client,
) -> None:
    old = items("1.0.0")
    new = copy.deepcopy(old)
    new["info"]["version"] = "1.1.0"
    new["paths"]["/items/{item}"] = new["paths"].pop("/items/{id}")  # same operation
    new["paths"]["/items/{item}"]["get"]["parameters"][0]["name"] = "item"
    new["paths"]["/items"]["post"] = {"responses": OK}
    new["paths"]["/items"]["get"]["parameters"].append({"name": "sort", "in": "query"})
    await put(client, "a-1", "a", old)
    await put(client, "a-2", "a", new)
    found = await entry(client, "a")
    assert [c["text"] for c in found["diffs"][0]["changes"]] == [
        "POST /items added",
        "GET /items: query parameter 'sort' added",
    ]
    assert not any(c["breaking"] for c in found["diffs"][0]["changes"])
    assert found["summary"] == "1 of 2 instances on 1.1.0; no breaking change (2 changes)"


async def test_request_bodies_through_refs_and_swagger_2(client: Client) -> None:
    def body_doc(version: str, required: list[str], body_required: bool) -> dict[str, Any]:
        return {
            "openapi": "3.0.3",
            "info": {"title": "b", "version": version},
            "paths": {
                "/things": {
                    "post": {"requestBody": {"$ref": "#/components/requestBodies/Thing"},
                             "parameters": [{"$ref": "#/components/parameters/Trace"}],
                             "responses": OK},
                }
            },
            "components": {
                "requestBodies": {
                    "Thing": {
                        "required": body_required,
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Thing"}}},
                    }
                },
                "schemas": {"Thing": {"allOf": [{"required": required}, {"type": "object"}]}},
                "parameters": {"Trace": {"name": "X-Trace", "in": "header",
                                         "required": version == "2"}},
            },
        }  # fmt: skip

    await put(client, "b-1", "b", body_doc("1", ["name", "old"], False))
    await put(client, "b-2", "b", body_doc("2", ["name", "size"], True))
    changes = (await entry(client, "b"))["diffs"][0]["changes"]
    assert [(c["text"], c["breaking"]) for c in changes] == [
        ("POST /things: header parameter 'X-Trace' now required", True),
        ("POST /things: request body now required", True),
        ("POST /things: request body field 'size' now required", True),
        ("POST /things: request body field 'old' no longer required", False),
    ]

    def swagger(version: str, required: list[str]) -> dict[str, Any]:
        body = {"name": "body", "in": "body", "schema": {"required": required}}
        return {
            "swagger": "2.0",
            "info": {"title": "s", "version": version},
            "paths": {"/pets": {"post": {"parameters": [body], "responses": OK}}},
        }

    await put(client, "s-1", "s", swagger("1", []))
    await put(client, "s-2", "s", swagger("2", ["name"]))
    changes = (await entry(client, "s"))["diffs"][0]["changes"]
    assert [c["text"] for c in changes] == ["POST /pets: request body field 'name' now required"]


async def test_one_document_and_instances_without_one(client: Client) -> None:
    await put(client, "web-1", "web", items("1.4.2"), port=1)
    await put(client, "web-2", "web", items("1.4.2"), port=2)
    await put(client, "web-3", "web", port=3)
    await put(client, "solo-1", "solo", items("2.0.0"))
    await put(client, "plain-1", "plain")  # no document at all: not in the catalog
    body = await catalog(client)
    assert [e["name"] for e in body["apis"]] == ["solo", "web"]
    solo, web = body["apis"]
    assert solo["summary"] == "the one instance on 2.0.0"
    assert web["summary"] == "2 of 3 instances on 1.4.2"
    assert web["without_document"] == ["web-3"]
    assert web["diffs"] == []
    await put(client, "web-3", "web", items("1.4.2"), port=3)
    assert (await entry(client, "web"))["summary"] == "all 3 instances on 1.4.2"
    assert (await catalog(client, "?name=plain"))["apis"] == []


async def test_same_version_different_documents_compares_with_the_newest(client: Client) -> None:
    await put(client, "x-1", "x", items("1.0.0"))
    await asyncio.sleep(0.01)
    await put(client, "x-2", "x", items("1.0.0", delete=False))
    found = await entry(client, "x")
    assert found["baseline_rule"] == "newest registration"
    newest = found["documents"][0]
    assert newest["instances"] == ["x-2"] and newest["baseline"]
    assert newest["label"] == f"1.0.0 ({newest['sha256'][:8]})"  # told apart by their sha
    assert found["summary"] == (
        f"1 of 2 instances on {newest['label']}; 1 breaking change: DELETE /items removed"
    )


async def test_a_document_too_large_is_listed_not_compared(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_apis, "DIFF_MAX_BYTES", 300)
    big = items("2.0.0")
    big["info"]["description"] = "x" * 400
    await put(client, "y-1", "y", items("1.0.0"))
    await put(client, "y-2", "y", big)
    found = await entry(client, "y")
    (diff,) = found["diffs"]
    assert diff["compared"] is False and diff["changes"] == []
    assert diff["not_compared_because"].endswith("; documents over 0.3 KiB are not compared")
    assert found["summary"].startswith("1 of 2 instances on 2.0.0; not compared: the document")


async def test_text_from_a_document_cannot_hide_anything(client: Client) -> None:
    sneaky = items("1.0.0")
    sneaky["info"]["title"] = "pay\u202eflow\u200b"
    sneaky["info"]["version"] = 7  # not even a string
    sneaky["paths"]["/" + "p" * 300] = {"get": {"responses": OK}}
    await put(client, "z-1", "z", sneaky)
    await put(client, "z-2", "z", items("1.0.0"))
    found = await entry(client, "z")
    titles = {d["title"] for d in found["documents"]}
    assert "pay\\u202eflow\\u200b" in titles
    assert {d["version"] for d in found["documents"]} == {"7", "1.0.0"}
    texts = [c["text"] for d in found["diffs"] for c in d["changes"]]
    assert all(len(t) < 260 and t.isprintable() for t in texts)
    assert safe_text("a" * 500).endswith("…") and len(safe_text("a" * 500)) == 200


async def test_a_blocking_query_on_a_name_wakes_for_that_name_only(client: Client) -> None:
    await put(client, "a-1", "a", items("1.0.0"))
    await put(client, "b-1", "b", items("1.0.0"))
    index = (await catalog(client, "?name=a"))["index"]
    waiting = asyncio.ensure_future(client.get(f"/v1/catalog/apis?name=a&index={index}&wait=5s"))
    await asyncio.sleep(0.2)
    await put(client, "b-2", "b", items("1.1.0"))  # another name: no wake
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await put(client, "a-2", "a", items("1.1.0"))
    answer = await asyncio.wait_for(waiting, 3.0)
    body = await answer.json()
    assert body["index"] > index
    assert body["apis"][0]["summary"] == (
        "1 of 2 instances on 1.1.0; no change in operations, parameters or required fields"
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [("?name=Not%20A%20Name", "name"), ("?index=x", "index"), ("?name=a&index=-1", "index")],
)
async def test_bad_parameters_are_400(client: Client, query: str, field: str) -> None:
    answer = await client.get(f"/v1/catalog/apis{query}")
    assert answer.status == 400
    assert (await answer.json())["error"]["field"] == field


def test_versions_order_as_releases_do() -> None:
    ordered = ["0.9", "1.4.2", "1.5.0-rc.1", "1.5.0", "v1.10.0", "2"]
    keys = [version_key(v) for v in ordered]
    assert all(k is not None for k in keys)
    assert sorted(ordered, key=lambda v: version_key(v)) == ordered  # type: ignore[arg-type, return-value]
    assert version_key("latest") is None and version_key("") is None


@pytest.mark.parametrize("token", ["\u00b2", "1" * 5000, "-1", "99999999999999999999"])
async def test_a_ref_into_a_list_with_an_odd_index_is_no_crash(client: Client, token: str) -> None:
    """`²` is a digit to `str.isdigit` but no number to `int`; 5000 digits are past what
    `int` reads: either once made the catalog answer 500."""
    odd = items("2.0.0")
    odd["x-shared"] = [{"name": "q", "in": "query"}]
    odd["paths"]["/items"]["get"]["parameters"].append({"$ref": f"#/x-shared/{token}"})
    await put(client, "r-1", "r", items("1.0.0"))
    await put(client, "r-2", "r", odd)
    found = await entry(client, "r")
    assert [d["compared"] for d in found["diffs"]] == [True]


def test_a_document_nested_past_any_limit_is_listed_not_a_crash() -> None:
    from master.catalog_apis import surface
    from master.model import Document

    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"openapi":"3.0.3","info":{"title":' + deep + b',"version":"1"},"paths":{}}'
    found = surface(Document.of(body))  # held by the store, however it got there
    assert found.unreadable is not None and found.operations == {}
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    assert safe_text(nested) == "…"


def hostile(version: str, paths: dict[str, Any], **components: Any) -> bytes:
    from master.model import canonical_document

    info = {"title": "hostile", "version": version}
    document = {"openapi": "3.0.3", "info": info, "components": components, "paths": paths}
    return canonical_document(document)


def test_a_long_pointer_named_from_thousands_of_places_is_walked_once() -> None:
    """Each `$ref` once split its whole pointer: 2 MiB of document blocked the loop (and
    every health check) for a minute and a half."""
    import time

    from master.catalog_apis import surface
    from master.model import Document

    pointer = "#/" + "/".join(["a"] * 200_000)
    parameter = {"$ref": "#/components/parameters/p"}
    paths = {f"/p{i}": {"get": {"parameters": [parameter] * 5}} for i in range(2000)}
    body = hostile("1", paths, parameters={"p": {"$ref": pointer}})
    started = time.perf_counter()
    found = surface(Document.of(body))
    assert time.perf_counter() - started < 2.0
    assert len(found.operations) == 2000 and found.unreadable is None


def test_a_body_shared_by_many_operations_is_read_once_and_its_diff_counted() -> None:
    """A request body named from every operation was read again for each (a set of its
    required fields each), and each changed field of each operation built a change, all
    but 200 of them thrown away: a 3 MiB document took the master's memory."""
    from master.catalog_apis import ApiCatalog
    from master.model import Document

    def version(prefix: str, number: str) -> Document:
        required = [f"{prefix}{n}" for n in range(100)]
        schema = {"application/json": {"schema": {"required": required}}}
        body = {"$ref": "#/components/requestBodies/b"}
        paths = {f"/p{i}": {"post": {"requestBody": body}} for i in range(1000)}
        return Document.of(hostile(number, paths, requestBodies={"b": {"content": schema}}))

    old, new = version("a", "1.0.0"), version("b", "2.0.0")
    catalog = ApiCatalog()
    operations = list(catalog.surface(old).operations.values())
    assert len({id(o.body_fields) for o in operations}) == 1  # one set, shared
    found = catalog.diff(old, new)
    assert found.total == 1000 * 200 and found.breaking == 1000 * 100
    assert len(found.changes) == catalog_apis.CHANGES_MAX
    assert all(c["breaking"] for c in found.changes)
    assert found.changes[0]["text"] == "POST /p0: request body field 'b0' now required"
