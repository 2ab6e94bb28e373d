"""The master's write API as the sidecar uses it: PUT and DELETE of one registration.

Each call tries the configured master URLs in order until one answers 2xx, with the bearer
token when there is one and a timeout per attempt. When none does, `MasterError` says what
each one answered, in the master's own words where it sent them (`{"error": {...}}`).
Retrying later is the sync loop's business, not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aiohttp
import msgspec

from master.model import ErrorAnswer, format_duration
from master.shared.probe import describe_error
from sidecar.config import MasterLink

MASTER_TIMEOUT: Final = 5.0  # per URL and request
ERROR_TEXT_MAX: Final = 200  # of an answer that is not the master's error shape


class MasterError(Exception):
    """No master accepted the request; `reasons` holds one text per URL tried."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class Stored:
    """What the master that took a PUT said it holds."""

    url: str  # the master URL that answered
    openapi_sha256: str | None  # of the document it holds for the service, None: none


class _Record(msgspec.Struct):
    """The one field of the master's answer (the stored record) the sidecar reads."""

    openapi_sha256: str | None = None


_RECORD: Final = msgspec.json.Decoder(_Record)
_ERROR: Final = msgspec.json.Decoder(ErrorAnswer)


class MasterClient:
    def __init__(self, session: aiohttp.ClientSession, *, timeout: float = MASTER_TIMEOUT) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_text = f"no answer within {format_duration(timeout)}"

    async def put(self, master: MasterLink, service_id: str, body: bytes) -> Stored:
        url, answer = await self._request(master, "PUT", service_id, body)
        try:
            sha256 = _RECORD.decode(answer).openapi_sha256
        except (msgspec.DecodeError, msgspec.ValidationError):
            sha256 = None  # a 2xx that is no record (a proxy's): it said nothing of a document
        return Stored(url, sha256)

    async def delete(self, master: MasterLink, service_id: str) -> str:
        """The URL of the master that deleted it; a 404 counts: it is gone either way."""
        url, _ = await self._request(master, "DELETE", service_id, None, gone_is_ok=True)
        return url

    async def _request(
        self,
        master: MasterLink,
        method: str,
        service_id: str,
        body: bytes | None,
        *,
        gone_is_ok: bool = False,
    ) -> tuple[str, bytes]:
        headers = {"Content-Type": "application/json"}
        if master.token:
            headers["Authorization"] = f"Bearer {master.token}"
        reasons: list[str] = []
        for base in master.urls:
            try:
                async with self._session.request(
                    method,
                    f"{base}/v1/services/{service_id}",
                    data=body,
                    headers=headers,
                    timeout=self._timeout,
                ) as response:
                    answer = await response.read()
                    if response.status < 300 or (gone_is_ok and response.status == 404):
                        return base, answer
                    reasons.append(f"{base}: {response.status} {_error_text(answer)}")
            except TimeoutError:
                reasons.append(f"{base}: {self._timeout_text}")
            except (aiohttp.ClientError, OSError) as exc:
                reasons.append(f"{base}: {describe_error(exc)}")
        raise MasterError(reasons)


def _error_text(answer: bytes) -> str:
    """The master's message (and the field it blames), else the start of the answer."""
    try:
        error = _ERROR.decode(answer).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return answer[:ERROR_TEXT_MAX].decode("utf-8", "replace").strip()
    return f"{error.message} ({error.field})" if error.field else error.message
