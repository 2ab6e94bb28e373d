"""The master's write API as the sidecar uses it: PUT and DELETE of one registration.

Each call tries the configured master URLs in order until one answers 2xx, with the bearer
token when there is one, the TLS context of the configuration for an https:// master, and
a timeout per attempt. When none does, `MasterError` says what each one answered, in the
master's own words where it sent them (`{"error": {...}}`); `IdConflict` when a master
refused because another instance holds the id (409 `id_conflict`). A DELETE names this
sidecar's instance, so the master removes the record only if this sidecar holds it.
Retrying later is the sync loop's business, not this module's.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Final

import aiohttp
import msgspec

from master.model import ErrorAnswer, ErrorDetail, format_duration
from master.shared.probe import describe_error
from sidecar.config import MasterLink

MASTER_TIMEOUT: Final = 5.0  # per URL and request
ERROR_TEXT_MAX: Final = 200  # of an answer that is not the master's error shape


ID_CONFLICT: Final = "id_conflict"
# The master's message names the holder: "... is held by 'host:9501', which ...", quoted
# as Python quotes a string (double quotes when it holds a single one), or bare.
_HOLDER_RE: Final = re.compile(
    r"""held by (?:'(?P<single>[^']*)'|"(?P<double>[^"]*)"|(?P<bare>[^\s,;)]+))"""
)


class MasterError(Exception):
    """No master accepted the request; `reasons` holds one text per URL tried."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class IdConflict(MasterError):
    """A master answered 409 id_conflict: the id is held by another instance, `holder`
    (as the master's message names it; None if it does not), and it keeps it."""

    def __init__(self, reasons: list[str], url: str, message: str) -> None:
        super().__init__(reasons)
        self.url = url
        self.message = message
        found = _HOLDER_RE.search(message)
        self.holder = next((g for g in found.groups() if g is not None), None) if found else None


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

    async def delete(self, master: MasterLink, service_id: str, instance: str) -> str:
        """The URL of the master that deleted it; a 404 counts: it is gone either way.
        IdConflict if another instance holds the id (the master keeps it)."""
        url, _ = await self._request(
            master, "DELETE", service_id, None, gone_is_ok=True, params={"instance": instance}
        )
        return url

    async def _request(
        self,
        master: MasterLink,
        method: str,
        service_id: str,
        body: bytes | None,
        *,
        gone_is_ok: bool = False,
        params: dict[str, str] | None = None,
    ) -> tuple[str, bytes]:
        headers = {"Content-Type": "application/json"}
        if master.token:
            headers["Authorization"] = f"Bearer {master.token}"
        # One context, built when the configuration was loaded; True: the system's defaults.
        tls: ssl.SSLContext | bool = master.ssl if master.ssl is not None else True
        reasons: list[str] = []
        conflict: tuple[str, str] | None = None
        for base in master.urls:
            try:
                async with self._session.request(
                    method,
                    f"{base}/v1/services/{service_id}",
                    data=body,
                    headers=headers,
                    params=params,
                    timeout=self._timeout,
                    ssl=tls,
                ) as response:
                    answer = await response.read()
                    if response.status < 300 or (gone_is_ok and response.status == 404):
                        return base, answer
                    error = _error(answer)
                    if response.status == 409 and error and error.code == ID_CONFLICT:
                        conflict = conflict or (base, error.message)
                    reasons.append(f"{base}: {response.status} {_error_text(error, answer)}")
            except TimeoutError:
                reasons.append(f"{base}: {self._timeout_text}")
            except (aiohttp.ClientError, OSError) as exc:
                reasons.append(f"{base}: {describe_failure(exc)}")
        if conflict is not None:  # a master's answer about the id outweighs one that is away
            raise IdConflict(reasons, *conflict)
        raise MasterError(reasons)


def _error(answer: bytes) -> ErrorDetail | None:
    try:
        return _ERROR.decode(answer).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _error_text(error: ErrorDetail | None, answer: bytes) -> str:
    """The master's message (and the field it blames), else the start of the answer."""
    if error is None:
        return answer[:ERROR_TEXT_MAX].decode("utf-8", "replace").strip()
    return f"{error.message} ({error.field})" if error.field else error.message


def describe_failure(exc: BaseException) -> str:
    """Why no answer came; a TLS failure in OpenSSL's words, without its error codes."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or str(cert_error)
        return f"TLS: the certificate of {exc.host}:{exc.port} is not trusted: {reason}"
    if isinstance(exc, aiohttp.ClientSSLError):
        reason = getattr(exc.os_error, "reason", None) or exc.os_error
        return f"TLS with {exc.host}:{exc.port} failed: {reason}"
    return describe_error(exc)
