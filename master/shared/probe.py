"""The HTTP probe, shared by the master's checks and the sidecar's `http` check.

One GET turns into a CheckResult; a failed probe is data, never an exception. The status
mapping, the 4 KiB output cap and the redirect rule live here once, so a service reads the
same whether the master checks it or its sidecar does. (The sidecar may import this module:
like `master.model`, it knows nothing of the registry.)
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import socket
import time
from typing import Any, Final

import aiohttp

from master.model import OUTPUT_MAX, CheckResult, FieldError, Status, format_duration, loads_json
from master.shared.capped import read_capped

PASSING_CODES: Final = range(200, 300)
WARNING_CODE: Final = 429
FOLLOW_REDIRECTS: Final = False  # a redirect is an answer, not health: Consul does the same


def status_of(http_status: int) -> Status:
    """2xx passing, 429 warning, anything else critical."""
    if http_status in PASSING_CODES:
        return Status.PASSING
    if http_status == WARNING_CODE:
        return Status.WARNING
    return Status.CRITICAL


# A check that fails for one of these failed here, not at the target: no descriptor left,
# no memory, no ephemeral port. It says nothing of the service.
LOCAL_FAULTS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EADDRNOTAVAIL}
)


class CheckNotRun(Exception):
    """The check could not be made for a local reason; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CheckRefused(OSError):
    """The check policy refuses the address (master.policy): the check is not made."""


def local_fault(exc: BaseException) -> str | None:
    """The local reason a request could not be made (`too many open files`), if it was one."""
    os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(os_error, OSError) and os_error.errno in LOCAL_FAULTS:
        return os_error.strerror or errno.errorcode.get(os_error.errno, "local error")
    return None


async def probe_http(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    *,
    user_agent: str,
    not_run: bool = False,
) -> CheckResult:
    """GET `url` once, reading at most OUTPUT_MAX bytes of the body. With `not_run`, a
    request that could not be made for a local reason raises CheckNotRun instead of
    reading as the target's failure (the master's checks; a sidecar reports it)."""
    started = time.perf_counter()
    try:
        async with (
            asyncio.timeout(timeout),
            session.get(
                url, allow_redirects=FOLLOW_REDIRECTS, headers={"User-Agent": user_agent}
            ) as response,
        ):
            # Leaving the block with the body unread drops the connection, so a huge body
            # is never transferred past the cap.
            body, _ = await read_capped(response.content, OUTPUT_MAX)
    except TimeoutError:
        return critical(f"timed out after {format_duration(timeout)}", started)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        reason = local_fault(exc)
        if reason is not None and not_run:
            raise CheckNotRun(reason) from None
        return critical(describe_error(exc), started)
    output = decode_capped(body)
    detail = _answer_detail(output, response.content_type)
    if detail is not None:
        output = detail.pop("output")
    return CheckResult(
        status=status_of(response.status),
        output=output or f"HTTP {response.status} {response.reason or ''}".rstrip(),
        duration_ms=elapsed_ms(started),
        http_status=response.status,
        detail=detail,
    )


def _answer_detail(text: str, content_type: str) -> dict[str, Any] | None:
    """A JSON answer with a text `output` (a sidecar's /health says what its own check of
    the service said there): that text is the output, the rest of the answer the detail,
    kept as data rather than as JSON inside a string."""
    if content_type != "application/json" or not text.startswith("{"):
        return None
    try:
        answer = loads_json(text)
    except FieldError:
        return None  # cut off by the cap, or not JSON after all: keep it as text
    if isinstance(answer, dict) and isinstance(answer.get("output"), str):
        return answer
    return None


def decode_capped(data: bytes) -> str:
    """UTF-8 text of a capped output; a character cut in two by the cap is left out."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    return decoder.decode(data, final=len(data) < OUTPUT_MAX)


def describe_error(exc: BaseException) -> str:
    """A short, human text for why a request got no answer ("connection refused by ...")."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_os_error(exc.os_error, exc.host, exc.port)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection without answering"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def describe_os_error(exc: OSError, host: str, port: int | None) -> str:
    where = f"{host}:{port}"
    if isinstance(exc, CheckRefused):
        return f"not checked: refused by the check policy: {exc}"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed for {host}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return f"connection refused by {where}"
    return f"cannot connect to {where}: {exc.strerror or exc}"


def critical(output: str, started: float) -> CheckResult:
    return CheckResult(Status.CRITICAL, output, elapsed_ms(started))


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
