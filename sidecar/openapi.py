"""Fetch the service's OpenAPI document: one GET, parsed as JSON or YAML, size-capped.

One attempt, no retries: the sync loop decides when to try again, and the exception
classes tell it why an attempt failed. `ServiceUnreachable` (the service is not up yet,
worth retrying soon) is a ConnectionError; `InvalidDocument` (it answered with something
that is no OpenAPI document) is a ValueError.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
from typing import Any, Final

import aiohttp
import yaml

from master.model import FieldError, check_openapi, format_duration, loads_json
from master.shared.capped import read_capped
from master.shared.probe import describe_error

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024  # what the master accepts with a document
ACCEPT: Final = "application/json, application/yaml;q=0.9, */*;q=0.5"
# The C loader, when PyYAML was built with libyaml, parses a large document many times faster.
_YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class OpenAPIError(Exception):
    """Fetching the document failed; the message names the URL and the reason."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class ServiceUnreachable(OpenAPIError, ConnectionError):
    """No answer: refused, timed out, or the connection broke."""


class BadStatus(OpenAPIError):
    """The service answered, but not with 2xx."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(url, reason)
        self.status = status


class InvalidDocument(OpenAPIError, ValueError):
    """The answer is not JSON or YAML, or not an OpenAPI document."""


class DocumentTooLarge(InvalidDocument):
    """The body is past the cap; reading stopped there."""


async def fetch_openapi(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """GET `url` within `timeout` and return the validated document.

    Redirects are followed (a moved document is still the document). YAML is read when
    the content type says so or the body is not JSON. At most `max_bytes` of the
    (decompressed) body is read.
    """
    try:
        async with (
            asyncio.timeout(timeout),
            session.get(url, headers={"Accept": ACCEPT}) as response,
        ):
            if not 200 <= response.status < 300:
                raise BadStatus(
                    url,
                    response.status,
                    f"HTTP {response.status} {response.reason or ''}".rstrip(),
                )
            body = await _read_capped(url, response, max_bytes)
            content_type = response.content_type
    except TimeoutError:
        raise ServiceUnreachable(url, f"timed out after {format_duration(timeout)}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ServiceUnreachable(url, describe_error(exc)) from None
    # Parsing a large YAML document takes a while: keep the event loop (and /health) free.
    return await asyncio.to_thread(_parse_document, url, body, content_type, max_bytes)


def _parse_document(url: str, body: bytes, content_type: str, max_bytes: int) -> dict[str, Any]:
    """The document in `body`: JSON, or YAML when the type says so or JSON fails."""
    if "yaml" in content_type:
        document = _parse_yaml(url, body, max_bytes)
    else:
        try:
            document = loads_json(body)
        except FieldError as json_error:
            if "json" in content_type:
                raise InvalidDocument(url, f"not JSON: {json_error.message}") from None
            document = _parse_yaml(url, body, max_bytes)
    try:
        return check_openapi(document, "body")
    except FieldError as exc:
        raise InvalidDocument(url, f"the body {exc.message}") from None


async def _read_capped(url: str, response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, refused as soon as it is known to pass `limit`: from its Content-Length,
    or while reading (the rest is never read)."""
    too_large = f"larger than {limit} bytes"
    if response.content_length is not None and response.content_length > limit:
        raise DocumentTooLarge(url, too_large)
    body, more = await read_capped(response.content, limit)
    if more:
        raise DocumentTooLarge(url, too_large)
    return body


def _parse_yaml(url: str, body: bytes, max_bytes: int) -> Any:
    try:
        return _Jsonable(url, max_bytes).convert(yaml.load(body, Loader=_YAML_LOADER))
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidDocument(url, f"not JSON or YAML: {problem}") from None
    except RecursionError:
        raise InvalidDocument(url, "nested too deeply") from None


class _Jsonable:
    """Turn a YAML tree into JSON values, as the master stores and serves it as JSON.

    YAML reads `200:` as an integer key and `2024-01-01` as a date: those become the
    strings they were written as. Aliases let a small file stand for a huge tree (the
    "billion laughs"), so the copy counts the bytes its JSON text would take at least and
    stops past `max_bytes`.
    """

    def __init__(self, url: str, max_bytes: int) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.left = max_bytes

    def convert(self, value: Any) -> Any:
        self._spend(len(value) + 3 if isinstance(value, str) else 2)  # `"abc",` or `0,`
        if isinstance(value, dict):
            return {self._key(key): self.convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.convert(item) for item in value]
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidDocument(self.url, f"{value} is not a JSON number")
        if value is None or isinstance(value, str | int | float | bool):
            return value
        if isinstance(value, datetime.date):
            return value.isoformat()
        raise InvalidDocument(self.url, f"a YAML {type(value).__name__} has no JSON form")

    def _key(self, key: Any) -> str:
        if isinstance(key, datetime.date):
            text = key.isoformat()
        elif key is None or isinstance(key, bool | int | float):
            text = json.dumps(key)  # as JSON writes such a key: 200 -> "200", true -> "true"
        elif isinstance(key, str):
            text = key
        else:
            raise InvalidDocument(self.url, f"a YAML {type(key).__name__} cannot be a key")
        self._spend(len(text) + 3)  # `"abc":`
        return text

    def _spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise DocumentTooLarge(self.url, f"expands past {self.max_bytes} bytes as JSON")
