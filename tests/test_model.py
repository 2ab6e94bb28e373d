"""The wire model (master.model): one decode that validates, and messages a person can use."""

from __future__ import annotations

import json

import pytest

from master.model import (
    KEEP,
    REGISTRATION_FIELDS,
    Document,
    FieldError,
    Registration,
    decode_registration,
    encode,
    json_schemas,
    registration_body,
)

BASE = {"id": "web-1", "name": "web", "address": "10.0.0.5", "port": 8080}


def refused(**changes: object) -> FieldError:
    with pytest.raises(FieldError) as caught:
        decode_registration(json.dumps({**BASE, **changes}).encode())
    return caught.value


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"port": 70000}, "port", "must be 1..65535, got 70000"),
        ({"port": "80"}, "port", "must be an integer 1..65535, got a string"),
        ({"name": "Web"}, "name", "must be lowercase letters, digits"),
        ({"tags": ["a", ""]}, "tags[1]", "must not be empty"),
        ({"tags": ["x"] * 65}, "tags", "must hold at most 64 tags, got 65"),
        ({"meta": {"a": 1}}, "meta.a", "must be a string, got an integer"),
        (
            {"address": "\u202e1.0.0.721"},
            "address",
            "U+202E RIGHT-TO-LEFT OVERRIDE",
        ),
        ({"tags": ["prod\u200b"]}, "tags[0]", "U+200B ZERO WIDTH SPACE"),
        ({"address": "a\x07b"}, "address", "must not contain control characters"),
        ({"check": {"url": "http://x/h", "interval": "2h"}}, "check.interval", "must be 1s..1h"),
        (
            {"check": {"url": "http://x/h", "interval": "5s", "timeout": "6s"}},
            "check.timeout",
            "must be above 0 and below interval (5s), got 6s",
        ),
        ({"check": {"url": "ftp://x/h"}}, "check.url", "must be an http:// or https:// URL"),
        ({"scheme": "ftp"}, "scheme", "must be http or https, got 'ftp'"),
    ],
)
def test_each_broken_field_is_named_with_what_is_wrong(
    changes: dict[str, object], field: str, message: str
) -> None:
    error = refused(**changes)
    assert error.field == field
    assert message in error.message


def test_unknown_and_missing_fields_have_their_own_codes() -> None:
    assert (refused(colour="red").code, refused(colour="red").field) == ("unknown_field", "colour")
    error = refused(check={"url": "http://x/h", "intervall": "5s"})
    assert (error.code, error.field) == ("unknown_field", "check.intervall")
    with pytest.raises(FieldError) as caught:
        decode_registration(b'{"id": "a", "name": "web", "port": 80}')
    assert (caught.value.code, caught.value.field) == ("missing_field", "address")


def test_a_registration_round_trips_through_its_body() -> None:
    registration = Registration(**BASE, tags=("b", "a", "b"), meta={"k": "v"})
    assert registration.tags == ("b", "a")  # a tag is a set member: the first one stays
    document = b'{"info":{},"openapi":"3.1.0"}'
    decoded, change = decode_registration(registration_body(registration, document))
    assert isinstance(change, Document) and change.body == document
    assert all(getattr(decoded, f) == getattr(registration, f) for f in REGISTRATION_FIELDS)
    assert decode_registration(registration_body(registration))[1] is KEEP
    assert decode_registration(registration_body(registration, None))[1] is None
    assert json.loads(encode(registration))["tags"] == ["b", "a"]


def test_the_json_schema_is_read_off_the_types() -> None:
    schemas = json_schemas("#/components/schemas/{name}")
    port = schemas["RegistrationBody"]["properties"]["port"]
    assert (port["minimum"], port["maximum"]) == (1, 65535)
    interval = schemas["CheckSpec"]["properties"]["interval"]
    assert interval["description"] == "1s..1h" and interval["default"] == "10s"
    assert schemas["RegistrationBody"]["additionalProperties"] is False


def test_a_document_nested_too_deeply_is_refused_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = json.dumps(BASE).encode()[:-1] + b',"openapi":{"openapi":"3.0.3","x":' + deep + b"}}"
    with pytest.raises(FieldError) as caught:
        decode_registration(body)
    assert caught.value.code == "invalid_json"
    assert "nested too deeply" in caught.value.message
