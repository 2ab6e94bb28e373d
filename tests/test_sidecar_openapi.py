"""Fetching the service's OpenAPI document from the Node.js service, as JSON and as YAML."""

from __future__ import annotations

import json
import time
from typing import Final

import aiohttp
import pytest

from master.model import openapi_digest
from sidecar.openapi import (
    BadStatus,
    DocumentTooLarge,
    InvalidDocument,
    OpenAPIError,
    ServiceUnreachable,
    fetch_openapi,
)
from tests import service_fixture
from tests.service_fixture import NodeService, unused_port

node_service = service_fixture.node_service
http_session = service_fixture.http_session

TIMEOUT: Final = 2.0


async def test_json_document(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    document = await fetch_openapi(http_session, node_service.url("/openapi.json"), timeout=TIMEOUT)
    assert document["openapi"] == "3.0.3"
    assert document["info"]["title"] == "node-test-service"


async def test_yaml_document_is_the_same_document(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    as_json = await fetch_openapi(http_session, node_service.url("/openapi.json"), timeout=TIMEOUT)
    as_yaml = await fetch_openapi(http_session, node_service.url("/openapi.yaml"), timeout=TIMEOUT)
    assert as_yaml == as_json
    assert openapi_digest(as_yaml) == openapi_digest(as_json)


async def test_a_changed_document_is_fetched(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    changed = {"openapi": "3.1.0", "info": {"title": "v2", "version": "2"}, "paths": {}}
    node_service.set_openapi(changed)
    assert (
        await fetch_openapi(http_session, node_service.url("/openapi.json"), timeout=TIMEOUT)
        == changed
    )


@pytest.mark.parametrize("content_type", ["application/yaml", "text/plain"])
async def test_yaml_becomes_json_values(
    node_service: NodeService, http_session: aiohttp.ClientSession, content_type: str
) -> None:
    """YAML reads `200:` as a number and `2024-05-01` as a date; JSON holds neither. Without
    a YAML content type, a body that is not JSON is still tried as YAML."""
    node_service.set_openapi(
        raw=(
            "swagger: '2.0'\n"
            "info: {title: dated, version: 2024-05-01}\n"
            "paths:\n"
            "  /a:\n"
            "    get:\n"
            "      responses:\n"
            "        200: {description: ok}\n"
            "x-anchors:\n"
            "  first: &shared {a: 1}\n"
            "  second: *shared\n"
        ),
        content_type=content_type,
    )
    document = await fetch_openapi(http_session, node_service.url("/openapi.json"), timeout=TIMEOUT)
    assert document["info"]["version"] == "2024-05-01"
    assert document["paths"]["/a"]["get"]["responses"] == {"200": {"description": "ok"}}
    assert document["x-anchors"] == {"first": {"a": 1}, "second": {"a": 1}}
    json.dumps(document, allow_nan=False)  # what the sync loop sends must be plain JSON


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        ('{"hello": "world"}', "application/json", "the body must be an OpenAPI document"),
        ("[1, 2]", "application/json", "the body must be an object, got a list"),
        ('{"openapi": "3.0.3",', "application/json", "not JSON: invalid JSON at line 1"),
        ("<html><body>Not Found</body></html>", "text/html", "the body must be an object"),
        ("openapi: [unclosed", "application/yaml", "not JSON or YAML: "),
        ("openapi: 3.0.3\nx: .nan\n", "application/yaml", "nan is not a JSON number"),
        ("", "application/json", "not JSON: "),
    ],
)
async def test_not_a_document(
    node_service: NodeService,
    http_session: aiohttp.ClientSession,
    raw: str,
    content_type: str,
    reason: str,
) -> None:
    node_service.set_openapi(raw=raw, content_type=content_type)
    url = node_service.url("/openapi.json")
    with pytest.raises(InvalidDocument) as caught:
        await fetch_openapi(http_session, url, timeout=TIMEOUT)
    assert str(caught.value).startswith(f"{url}: {reason}")
    assert isinstance(caught.value, ValueError)


async def test_too_large_by_content_length(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    url = node_service.url("/openapi.json")
    with pytest.raises(DocumentTooLarge, match="larger than 100 bytes"):
        await fetch_openapi(http_session, url, timeout=TIMEOUT, max_bytes=100)


async def test_too_large_while_reading(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    """/big sends 1 MiB with no Content-Length: the cap stops the read itself."""
    with pytest.raises(DocumentTooLarge, match="larger than 65536 bytes"):
        await fetch_openapi(
            http_session, node_service.url("/big"), timeout=TIMEOUT, max_bytes=64 * 1024
        )


async def test_yaml_aliases_cannot_blow_up(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    """A "billion laughs" file is small, but its tree is not: the copy to JSON stops early."""
    lines = ["openapi: 3.0.3", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    node_service.set_openapi(raw="\n".join(lines) + "\n", content_type="application/yaml")
    started = time.monotonic()
    with pytest.raises(DocumentTooLarge, match="expands past"):
        await fetch_openapi(http_session, node_service.url("/openapi.json"), timeout=TIMEOUT)
    assert time.monotonic() - started < 10


async def test_service_down(http_session: aiohttp.ClientSession) -> None:
    port = unused_port()
    url = f"http://127.0.0.1:{port}/openapi.json"
    with pytest.raises(ServiceUnreachable) as caught:
        await fetch_openapi(http_session, url, timeout=TIMEOUT)
    assert str(caught.value) == f"{url}: connection refused by 127.0.0.1:{port}"
    assert isinstance(caught.value, ConnectionError)


async def test_service_hangs(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    url = node_service.url("/hang")
    with pytest.raises(ServiceUnreachable, match="timed out after 300ms"):
        await fetch_openapi(http_session, url, timeout=0.3)


async def test_no_document_there(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    url = node_service.url("/no-such-document.json")
    with pytest.raises(BadStatus) as caught:
        await fetch_openapi(http_session, url, timeout=TIMEOUT)
    assert (caught.value.status, str(caught.value)) == (404, f"{url}: HTTP 404 Not Found")
    assert isinstance(caught.value, OpenAPIError)


async def test_redirect_is_followed(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    """/redirect points at /healthz, whose "ok" is no document: the redirect was followed."""
    with pytest.raises(InvalidDocument, match="the body must be an object, got a string"):
        await fetch_openapi(http_session, node_service.url("/redirect"), timeout=TIMEOUT)
    assert node_service.hits("/healthz") == 1
