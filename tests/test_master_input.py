"""Malformed and hostile requests: each gets the right 4xx and error code, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Master

GOOD = {"id": "a", "name": "web", "address": "127.0.0.1", "port": 80}
JSON = {"Content-Type": "application/json"}


def body(**changes: Any) -> bytes:
    merged = {**GOOD, **changes}
    return json.dumps({k: v for k, v in merged.items() if v is not ...}).encode()


def check(**changes: Any) -> bytes:
    spec = {"url": "http://127.0.0.1:1/health", **changes}
    return body(check={k: v for k, v in spec.items() if v is not ...})


# (name, method, path, raw body, headers, status, code, field)
CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str, str | None]] = [
    (
        "truncated json",
        "PUT",
        "/v1/services/a",
        b'{"id": "a", "name":',
        JSON,
        400,
        "invalid_json",
        None,
    ),
    ("empty body", "PUT", "/v1/services/a", b"", JSON, 400, "invalid_json", None),
    ("not an object", "PUT", "/v1/services/a", b"[1, 2]", JSON, 400, "invalid_field", None),
    ("string body", "PUT", "/v1/services/a", b'"hello"', JSON, 400, "invalid_field", None),
    (
        "deeply nested arrays",
        "PUT",
        "/v1/services/a",
        b"[" * 200_000 + b"]" * 200_000,
        JSON,
        400,
        "invalid_json",
        None,
    ),
    (
        "deeply nested in a field",
        "PUT",
        "/v1/services/a",
        b'{"id":"a","name":"web","address":"x","port":80,"meta":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        JSON,
        400,
        "invalid_json",
        None,
    ),
    (
        "huge integer port",
        "PUT",
        "/v1/services/a",
        body(port=10**40),
        JSON,
        400,
        "invalid_field",
        "port",
    ),
    (
        "integer too long to parse",
        "PUT",
        "/v1/services/a",
        b'{"id":"a","name":"web","address":"x","port":' + b"9" * 5000 + b"}",
        JSON,
        400,
        "invalid_json",
        None,
    ),
    ("float port", "PUT", "/v1/services/a", body(port=80.5), JSON, 400, "invalid_field", "port"),
    (
        "NaN port",
        "PUT",
        "/v1/services/a",
        b'{"id":"a","name":"web","address":"x","port":NaN}',
        JSON,
        400,
        "invalid_json",
        None,
    ),
    ("boolean port", "PUT", "/v1/services/a", body(port=True), JSON, 400, "invalid_field", "port"),
    ("port zero", "PUT", "/v1/services/a", body(port=0), JSON, 400, "invalid_field", "port"),
    (
        "port as string",
        "PUT",
        "/v1/services/a",
        body(port="80"),
        JSON,
        400,
        "invalid_field",
        "port",
    ),
    ("missing name", "PUT", "/v1/services/a", body(name=...), JSON, 400, "missing_field", "name"),
    ("missing port", "PUT", "/v1/services/a", body(port=...), JSON, 400, "missing_field", "port"),
    (
        "uppercase name",
        "PUT",
        "/v1/services/a",
        body(name="Web"),
        JSON,
        400,
        "invalid_field",
        "name",
    ),
    (
        "name too long",
        "PUT",
        "/v1/services/a",
        body(name="a" * 64),
        JSON,
        400,
        "invalid_field",
        "name",
    ),
    (
        "id disagrees with path",
        "PUT",
        "/v1/services/a",
        body(id="b"),
        JSON,
        400,
        "invalid_field",
        "id",
    ),
    (
        "id too long",
        "PUT",
        "/v1/services/" + "a" * 129,
        body(id=...),
        JSON,
        400,
        "invalid_field",
        "id",
    ),
    (
        "tags not a list",
        "PUT",
        "/v1/services/a",
        body(tags="web"),
        JSON,
        400,
        "invalid_field",
        "tags",
    ),
    (
        "tag not a string",
        "PUT",
        "/v1/services/a",
        body(tags=["ok", 3]),
        JSON,
        400,
        "invalid_field",
        "tags[1]",
    ),
    (
        "empty tag",
        "PUT",
        "/v1/services/a",
        body(tags=["ok", ""]),
        JSON,
        400,
        "invalid_field",
        "tags[1]",
    ),
    (
        "tag too long",
        "PUT",
        "/v1/services/a",
        body(tags=["x" * 129]),
        JSON,
        400,
        "invalid_field",
        "tags[0]",
    ),
    (
        "too many tags",
        "PUT",
        "/v1/services/a",
        body(tags=[f"t{i}" for i in range(65)]),
        JSON,
        400,
        "invalid_field",
        "tags",
    ),
    (
        "control character in tag",
        "PUT",
        "/v1/services/a",
        body(tags=["a\u0000b"]),
        JSON,
        400,
        "invalid_field",
        "tags[0]",
    ),
    (
        "bidi override in the address",
        "PUT",
        "/v1/services/a",
        body(address="\u202e1.0.0.721"),
        JSON,
        400,
        "invalid_field",
        "address",
    ),
    (
        "zero width space in a tag",
        "PUT",
        "/v1/services/a",
        body(tags=["prod", "prod\u200b"]),
        JSON,
        400,
        "invalid_field",
        "tags[1]",
    ),
    (
        "zero width joiner in a meta key",
        "PUT",
        "/v1/services/a",
        body(meta={"te\u200dam": "x"}),
        JSON,
        400,
        "invalid_field",
        "meta key",
    ),
    (
        "line separator in a meta value",
        "PUT",
        "/v1/services/a",
        body(meta={"team": "a\u2028b"}),
        JSON,
        400,
        "invalid_field",
        "meta.team",
    ),
    (
        "bidi isolate in the instance",
        "PUT",
        "/v1/services/a",
        body(instance="host\u2066:9501"),
        JSON,
        400,
        "invalid_field",
        "instance",
    ),
    (
        "lone surrogate in tag",
        "PUT",
        "/v1/services/a",
        b'{"id":"a","name":"web","address":"x","port":80,"tags":["\\ud800"]}',
        JSON,
        400,
        "invalid_field",
        "tags[0]",
    ),
    (
        "invalid utf-8",
        "PUT",
        "/v1/services/a",
        b'{"id":"a","name":"\xff\xfe"}',
        JSON,
        400,
        "invalid_json",
        None,
    ),
    (
        "meta value not a string",
        "PUT",
        "/v1/services/a",
        body(meta={"a": 1}),
        JSON,
        400,
        "invalid_field",
        "meta.a",
    ),
    (
        "too many meta keys",
        "PUT",
        "/v1/services/a",
        body(meta={f"k{i}": "v" for i in range(65)}),
        JSON,
        400,
        "invalid_field",
        "meta",
    ),
    (
        "unknown field",
        "PUT",
        "/v1/services/a",
        body(colour="red"),
        JSON,
        400,
        "unknown_field",
        "colour",
    ),
    (
        "bad scheme",
        "PUT",
        "/v1/services/a",
        body(scheme="ftp"),
        JSON,
        400,
        "invalid_field",
        "scheme",
    ),
    (
        "check without url",
        "PUT",
        "/v1/services/a",
        check(url=...),
        JSON,
        400,
        "missing_field",
        "check.url",
    ),
    (
        "check url not http",
        "PUT",
        "/v1/services/a",
        check(url="file:///etc/passwd"),
        JSON,
        400,
        "invalid_field",
        "check.url",
    ),
    (
        "bad interval",
        "PUT",
        "/v1/services/a",
        check(interval="soon"),
        JSON,
        400,
        "invalid_field",
        "check.interval",
    ),
    (
        "interval too short",
        "PUT",
        "/v1/services/a",
        check(interval="10ms"),
        JSON,
        400,
        "invalid_field",
        "check.interval",
    ),
    (
        "timeout not below interval",
        "PUT",
        "/v1/services/a",
        check(interval="2s", timeout="2s"),
        JSON,
        400,
        "invalid_field",
        "check.timeout",
    ),
    (
        "threshold zero",
        "PUT",
        "/v1/services/a",
        check(failures_before_critical=0),
        JSON,
        400,
        "invalid_field",
        "check.failures_before_critical",
    ),
    (
        "unknown check field",
        "PUT",
        "/v1/services/a",
        check(retries=3),
        JSON,
        400,
        "unknown_field",
        "check.retries",
    ),
    (
        "openapi not an object",
        "PUT",
        "/v1/services/a",
        body(openapi="yes"),
        JSON,
        400,
        "invalid_field",
        "openapi",
    ),
    (
        "openapi without version key",
        "PUT",
        "/v1/services/a",
        body(openapi={"paths": {}}),
        JSON,
        400,
        "invalid_field",
        "openapi",
    ),
    (
        "form body",
        "PUT",
        "/v1/services/a",
        b"name=web&port=80",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "xml body",
        "PUT",
        "/v1/services/a",
        b"<service/>",
        {"Content-Type": "text/xml"},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "over 1 MiB without document",
        "PUT",
        "/v1/services/a",
        body(meta={"pad": "x" * (1 << 20)}),
        JSON,
        413,
        "body_too_large",
        None,
    ),
    (
        "over 8 MiB declared",
        "PUT",
        "/v1/services/a",
        b"{" + b" " * (8 << 20) + b"}",
        JSON,
        413,
        "body_too_large",
        None,
    ),
    ("unknown path", "GET", "/v1/nothing", b"", {}, 404, "not_found", None),
    ("wrong method", "POST", "/v1/services/a", body(), JSON, 405, "method_not_allowed", None),
    ("delete unknown", "DELETE", "/v1/services/ghost", b"", {}, 404, "not_found", None),
    ("bad index", "GET", "/v1/services?index=-1", b"", {}, 400, "invalid_field", "index"),
    ("bad wait", "GET", "/v1/services?index=1&wait=forever", b"", {}, 400, "invalid_field", "wait"),
    (
        "bad openapi flag",
        "GET",
        "/v1/services?openapi=maybe",
        b"",
        {},
        400,
        "invalid_field",
        "openapi",
    ),
]


@pytest.fixture(scope="module")
def shared_master(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import BIN, Master

    tmp = tmp_path_factory.mktemp("input")
    master = Master(
        [
            str(BIN / "picoapi-master"),
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--store",
            f"sqlite:///{tmp}/registry.db",
        ],
        tmp / "master.log",
    ).start_wait()
    yield master
    master.stop()


@pytest.mark.parametrize(
    ("method", "path", "raw", "headers", "status", "code", "field"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_refused_clearly(
    shared_master: Master,
    method: str,
    path: str,
    raw: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    field: str | None,
) -> None:
    answer = shared_master.request(method, path, raw=raw, headers=headers)
    assert answer.status == status, answer
    error = answer.json()["error"]
    assert error["code"] == code, error
    assert error.get("field") == field, error
    assert error["message"] and "Traceback" not in error["message"]


def test_nothing_bad_was_stored_and_master_is_healthy(shared_master: Master) -> None:
    for case in CASES:
        shared_master.request(*case[1:3], raw=case[3], headers=case[4])
    assert shared_master.request("GET", "/v1/services").json()["services"] == []
    assert shared_master.request("GET", "/healthz").status == 200
    assert not [e for e in shared_master.events() if e.get("level") == "error"]


def test_document_up_to_8_mib_is_accepted(shared_master: Master) -> None:
    doc = {"openapi": "3.0.3", "info": {"title": "big", "version": "1"}, "x-pad": "p" * (3 << 20)}
    answer = shared_master.request(
        "PUT", "/v1/services/big", raw=body(id="big", openapi=doc), headers=JSON
    )
    assert answer.status == 200, answer
    assert shared_master.request("DELETE", "/v1/services/big").status == 200
