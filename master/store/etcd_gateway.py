"""A small asyncio client for etcd's v3 JSON gateway (grpc-gateway on the client port).

HTTP/1.1 JSON with the aiohttp client we ship, not gRPC: no grpcio/protobuf, and the
same calls work on etcd 3.4 (Debian 12), 3.5 and 3.6. The gateway's ways, handled once:
- bytes are base64; int64s arrive as strings and are left out when zero: the wire types
  below say so (msgspec decodes base64 into `bytes` and, lax, "123" into `int`).
- errors are `{error, code, message}` up to 3.5, google.rpc.Status `{code, message,
  details}` from 3.6; a stream's are `{"error": {...}}`, its messages `{"result": ...}`.
- what needs a leader carries `Grpc-Metadata-hasleader: true`: a member that lost quorum
  refuses it at once ("no leader") instead of holding it for 7 s, and cancels a watch
  instead of letting it go stale (etcd #10819). Status and serializable reads go without.
- a keepalive is one POST each (client streaming through the gateway is unreliable, etcd
  #8237); a watch is one streamed POST, cancelled by closing it (etcd #12333).
A write whose outcome is unknown (sent, then a timeout or a dropped connection) is not
sent again: a repeated txn would report our own success as a failed compare. It moves to
the next endpoint only when surely not applied (no connection; etcd refused to propose).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import aiohttp
import msgspec

PAGE_SIZE: Final = 1000  # keys per page of a range: no 100,000-key answer in one piece
CONNECT_TIMEOUT: Final = 1.0  # a dead member on another host must not eat the whole timeout
IDLE_TIMEOUT: Final = 3 * 600.0  # 3x etcd's default progress interval (10 min); pass yours
LEADER: Final = {"Grpc-Metadata-hasleader": "true"}
JSON: Final = {"Content-Type": "application/json"}
# etcd's errors that mean "refused before proposing": safe to send the write elsewhere.
NOT_APPLIED: Final = ("no leader", "server stopped", "not capable", "too many requests")
UNAVAILABLE_CODES: Final = (4, 14)  # gRPC DEADLINE_EXCEEDED, UNAVAILABLE
# 3.4 without hasleader says "context deadline exceeded" with code 2 (UNKNOWN)
UNAVAILABLE_TEXTS: Final = (*NOT_APPLIED, "timed out", "deadline exceeded")
# Raised before the request left: no connection was made (the second is aiohttp 3.10+'s
# connect timeout; before it, a connect timeout is a ServerTimeoutError: outcome unknown).
_CONNECT_TIMEOUT: type[Exception] = getattr(
    aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError
)
NOT_SENT: Final = (aiohttp.ClientConnectorError, _CONNECT_TIMEOUT)


class EtcdError(Exception):
    """etcd refused a request, or answered something this client cannot read."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code  # the gRPC status code, 0 when there was none


class EtcdUnavailable(EtcdError, ConnectionError):
    """No endpoint answered, or the one that did has no leader or gave up waiting.
    `outcome_unknown`: a write that may have been applied (it was not repeated)."""

    def __init__(
        self, message: str, *, code: int = 0, refused: bool = False, outcome_unknown: bool = False
    ) -> None:
        super().__init__(message, code=code)
        self.refused = refused  # etcd said it did not apply it
        self.outcome_unknown = outcome_unknown


class WatchIdle(EtcdUnavailable):
    """A watch stream said nothing for its idle timeout: a cut network, not a quiet one."""


class Compacted(EtcdError):
    """A watch or a range at a revision etcd has compacted away. `compact_revision` is the
    oldest one left (a watch tells it; a range does not, and gives 0)."""

    def __init__(self, message: str, *, compact_revision: int = 0, code: int = 11) -> None:
        super().__init__(message, code=code)
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    # Named and typed as etcd's JSON, so msgspec decodes it directly (absent = zero).
    key: bytes = b""
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    kv: KeyValue  # for a delete: the key, and the deletion's revision as mod_revision


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int  # the header revision; no events = a progress notification
    events: tuple[Event, ...]
    progress: bool

    @property
    def next_revision(self) -> int:
        """Where to resume so that no event is lost or repeated. Not `revision + 1` after
        events: a catch-up message holds at most 1000 revisions but carries the newest
        revision of the store in its header (mvcc watchable_store.go, syncWatchers)."""
        return self.events[-1].kv.mod_revision + 1 if self.events else self.revision + 1


@dataclass(frozen=True, slots=True)
class OpResponse:
    kind: Literal["put", "delete", "range"]
    kvs: tuple[KeyValue, ...] = ()  # range
    deleted: int = 0  # delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[OpResponse, ...]


@dataclass(frozen=True, slots=True)
class MemberStatus:
    endpoint: str
    member_id: int
    leader: int  # 0: this member knows no leader
    raft_term: int
    revision: int
    version: str
    errors: tuple[str, ...]  # e.g. "etcdserver: no leader"


CompareTarget = Literal["mod_revision", "create_revision", "version", "value"]
_TARGETS: Final = {
    "mod_revision": "MOD",
    "create_revision": "CREATE",
    "version": "VERSION",
    "value": "VALUE",
}
_RESULTS: Final = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a txn; with `range_end`, it must hold for every key in the range
    (etcd 3.3+; an empty range compares as one absent key: revisions and version 0)."""

    key: bytes
    target: CompareTarget
    op: Literal["=", "!=", "<", ">"]
    operand: int | bytes
    range_end: bytes | None = None

    def wire(self) -> dict[str, Any]:
        if (self.target == "value") != isinstance(self.operand, bytes):
            raise TypeError(
                f"compare on {self.target} needs {'bytes' if self.target == 'value' else 'an int'}"
            )
        body = {"key": _b64(self.key), "target": _TARGETS[self.target], "result": _RESULTS[self.op]}
        body[self.target] = (
            _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        )
        if self.range_end is not None:
            body["range_end"] = _b64(self.range_end)
        return body


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a txn branch: `Op.put`, `Op.delete` or `Op.range`."""

    kind: Literal["put", "delete", "range"]
    body: dict[str, Any]

    @classmethod
    def put(cls, key: bytes, value: bytes, *, lease: int = 0) -> Op:
        body = {"key": _b64(key), "value": _b64(value)}
        return cls("put", {**body, "lease": str(lease)} if lease else body)

    @classmethod
    def delete(cls, key: bytes, range_end: bytes | None = None) -> Op:
        return cls("delete", _key_range(key, range_end))

    @classmethod
    def range(cls, key: bytes, range_end: bytes | None = None, *, limit: int = 0) -> Op:
        body = _key_range(key, range_end)
        return cls("range", {**body, "limit": str(limit)} if limit else body)

    def wire(self) -> dict[str, Any]:
        field = {"put": "request_put", "delete": "request_delete_range", "range": "request_range"}
        return {field[self.kind]: self.body}


def prefix_end(prefix: bytes) -> bytes:
    """The range_end for "every key under prefix": the prefix with its last byte below
    0xff incremented; b"\\x00" (no end) when there is none (b"", b"\\xff\\xff")."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else b"\x00"


# -- the wire: what etcd's JSON holds, decoded in lax mode (int64 strings, absent = 0) --------


class _Header(msgspec.Struct):
    revision: int = 0
    member_id: int = 0
    raft_term: int = 0


class _Answer(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)


class _RangeAnswer(_Answer):
    kvs: list[KeyValue] = []
    more: bool = False


class _DeleteAnswer(_Answer):
    deleted: int = 0


class _ResponseOp(msgspec.Struct):
    response_range: _RangeAnswer | None = None
    response_delete_range: _DeleteAnswer | None = None


class _TxnAnswer(_Answer):
    succeeded: bool = False
    responses: list[_ResponseOp] = []


class _LeaseAnswer(_Answer):
    ID: int = 0
    TTL: int = 0
    error: str = ""


class _StatusAnswer(_Answer):
    version: str = ""
    leader: int = 0
    raftTerm: int = 0
    errors: list[str] = []


class _WireEvent(msgspec.Struct):
    kv: KeyValue
    type: str = "PUT"


class _StreamResult(_Answer):
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[_WireEvent] = []
    TTL: int = 0  # a keepalive's answer


class _StreamLine(msgspec.Struct):
    result: _StreamResult | None = None
    error: dict[str, Any] | None = None


T = TypeVar("T")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_range(key: bytes, range_end: bytes | None) -> dict[str, str]:
    body = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return body


def _decode(kind: type[T], data: bytes) -> T:
    try:
        return msgspec.json.decode(data, type=kind, strict=False)
    except msgspec.DecodeError as exc:
        raise EtcdError(f"unexpected answer from etcd ({exc}): {data[:200]!r}") from exc


def _error(doc: Any, status: int = 0) -> EtcdError:
    """The exception for an error body of any version: 3.4/3.5 unary `{error, code,
    message}`, 3.6 `{code, message, details}`, or a stream's `{"error": {...}}`."""
    if isinstance(doc, bytes):
        try:
            doc = msgspec.json.decode(doc)
        except msgspec.DecodeError:
            doc = doc.decode(errors="replace").strip()
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        doc = doc["error"]
    if not isinstance(doc, dict):
        kind = EtcdUnavailable if status in (502, 503, 504) else EtcdError
        return kind(f"HTTP {status}: {str(doc)[:200]}")
    message = str(doc.get("message") or doc.get("error") or f"HTTP {status}")
    code = doc.get("code", doc.get("grpc_code", 0))
    code = code if isinstance(code, int) else 0
    if "compacted" in message:
        return Compacted(message, code=code)
    refused = any(marker in message for marker in NOT_APPLIED)
    if code in UNAVAILABLE_CODES or status == 503 or any(t in message for t in UNAVAILABLE_TEXTS):
        return EtcdUnavailable(message, code=code, refused=refused)
    return EtcdError(message, code=code)


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if "://" in url else f"http://{url}"


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class LineBuffer:
    """Splits a byte stream into its newline-ended messages: chunk boundaries fall
    anywhere, and the gateway sends blank lines between messages (etcd3gw, LP #2072492)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        searched = len(self._buffer)  # no newline before here: do not scan it again
        self._buffer += chunk
        lines, start = [], 0
        while (end := self._buffer.find(b"\n", max(start, searched))) >= 0:
            line = bytes(self._buffer[start:end]).strip()
            if line:
                lines.append(line)
            start = end + 1
        del self._buffer[:start]
        return lines

    def end(self) -> list[bytes]:
        """What is left at the end of the stream: the gateway writes a stream's error
        without a newline after it."""
        return self.feed(b"\n")


class EtcdClient:
    """One etcd cluster through its gateway, e.g. `EtcdClient(["http://127.0.0.1:2379"])`.
    Requests go to the endpoint that last answered, and on to the others if it does not."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self.endpoints = [_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self._timeouts = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(CONNECT_TIMEOUT, timeout)
        )
        self._current = 0
        # Watches go on a fresh connection each: a kept-alive one the member has closed
        # (restarted) fails only once the request is sent. Writes stay on kept-alive
        # connections: a fresh one each cost a third of the write rate here (421 against
        # 602 txn/s, 64 writers, one member) and left a socket in TIME_WAIT a write,
        # capping a master near 470 writes/s; a write that meets a closed connection is
        # raised as outcome unknown, and the store's own compares make trying it again
        # safe (master.store.etcd).
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    async def open(self) -> EtcdClient:
        """Create the sessions now (else the first request does)."""
        self._session(fresh=False)
        self._session(fresh=True)
        return self

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    async def __aenter__(self) -> EtcdClient:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- KV ------------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int | None = None,
        limit: int = 0,
        serializable: bool = False,
    ) -> tuple[int, list[KeyValue]]:
        """The keys in [key, range_end) (or `key` alone), and the revision they are as of:
        `revision` if given, else the first page's. Pages of PAGE_SIZE, all at that one
        revision (a compaction between pages raises Compacted: list again)."""
        at, start = revision or 0, key
        kvs: list[KeyValue] = []
        while True:
            page = limit - len(kvs) if limit else 0
            if range_end is not None:
                page = min(page or PAGE_SIZE, PAGE_SIZE)
            body: dict[str, Any] = _key_range(start, range_end)
            if page:
                body["limit"] = str(page)
            if at:
                body["revision"] = str(at)
            if serializable:
                body["serializable"] = True
            data = await self._post("/v3/kv/range", body, write=False, leader=not serializable)
            answer = _decode(_RangeAnswer, data)
            at = at or answer.header.revision
            kvs += answer.kvs
            if range_end is None or not answer.more or not answer.kvs or len(kvs) == limit:
                return at, kvs
            start = answer.kvs[-1].key + b"\x00"  # the next key after the last one

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Store `value` at `key`; the revision of the change."""
        data = await self._post("/v3/kv/put", Op.put(key, value, lease=lease).body, write=True)
        return _decode(_Answer, data).header.revision

    async def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        """Remove `key` (or the range); the store's revision after it (unchanged if absent)."""
        data = await self._post("/v3/kv/deleterange", _key_range(key, range_end), write=True)
        return _decode(_Answer, data).header.revision

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """If every compare holds, do `success`, else `failure`, in one revision."""
        branch = list(success)
        body = {
            "compare": [c.wire() for c in compare],
            "success": [op.wire() for op in success],
            "failure": [op.wire() for op in failure],
        }
        answer = _decode(_TxnAnswer, await self._post("/v3/kv/txn", body, write=True))
        if not answer.succeeded:
            branch = list(failure)
        responses = []
        for op, wire in zip(branch, answer.responses, strict=False):
            if op.kind == "range" and wire.response_range is not None:
                responses.append(OpResponse("range", kvs=tuple(wire.response_range.kvs)))
            elif op.kind == "delete" and wire.response_delete_range is not None:
                responses.append(OpResponse("delete", deleted=wire.response_delete_range.deleted))
            else:
                responses.append(OpResponse(op.kind))
        return TxnResult(answer.succeeded, answer.header.revision, tuple(responses))

    # -- leases --------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its ID, the TTL granted: at least etcd's minimum, 1.5x the
        election timeout rounded up). Repeating a grant only leaks a lease that expires."""
        data = await self._post("/v3/lease/grant", {"TTL": str(ttl)}, write=False)
        answer = _decode(_LeaseAnswer, data)
        if answer.error:
            raise EtcdError(answer.error)
        return answer.ID, answer.TTL

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; the TTL it has again, 0 when it is gone."""
        data = await self._post("/v3/lease/keepalive", {"ID": str(lease_id)}, write=False)
        buffer = LineBuffer()
        for line in buffer.feed(data) + buffer.end():
            message = _decode(_StreamLine, line)
            if message.error is not None:
                raise _error(message.error)
            if message.result is not None:
                return message.result.TTL
        raise EtcdError(f"empty keepalive answer for lease {lease_id}")

    async def lease_revoke(self, lease_id: int) -> None:
        """End the lease and delete its keys; a lease already gone is fine. (The primary
        path; /v3/kv/lease/revoke is the older binding, kept by 3.4 to 3.6.)"""
        try:
            await self._post("/v3/lease/revoke", {"ID": str(lease_id)}, write=False)
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise

    # -- maintenance ---------------------------------------------------------------------

    async def status(self, endpoint: str | None = None) -> MemberStatus:
        """One member's view (the current endpoint's, or `endpoint`'s): leader, term,
        revision. Answers without a leader too, with 0 as the leader."""
        data = await self._post(
            "/v3/maintenance/status", {}, write=False, leader=False, only=endpoint
        )
        answered = self.endpoints[self._current]  # no await since: the one that answered
        s = _decode(_StatusAnswer, data)
        header = s.header
        return MemberStatus(
            answered,
            header.member_id,
            s.leader,
            s.raftTerm,
            header.revision,
            s.version,
            tuple(s.errors),
        )

    # -- watch ---------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        *,
        progress_notify: bool = True,
        idle_timeout: float = IDLE_TIMEOUT,
        on_created: Callable[[], None] | None = None,
    ) -> AsyncIterator[WatchBatch]:
        """Changes to [key, range_end) from `start_revision` (0: from now), in revision
        order, over one streamed POST. Ends only by an exception: Compacted (list again),
        EtcdUnavailable (no leader, stream broken or ended, no acknowledgement within the
        timeout; WatchIdle after `idle_timeout` of silence once created): resume from the
        last batch's `next_revision`. `on_created` is called when etcd acknowledges the
        watch (it is then following). Use it under `contextlib.aclosing` so leaving the
        loop closes the connection at once."""
        create = {**_key_range(key, range_end), "progress_notify": progress_notify}
        if start_revision:
            create["start_revision"] = str(start_revision)
        response, endpoint = await self._open_stream("/v3/watch", {"create_request": create})
        lines, created = LineBuffer(), False
        try:
            while True:
                try:
                    chunk = await self._read(
                        response, endpoint, idle_timeout if created else self.timeout
                    )
                except WatchIdle as exc:
                    if created:
                        raise
                    # not a quiet stream: etcd never acknowledged the watch
                    raise EtcdUnavailable(f"{endpoint}: watch not acknowledged: {exc}") from None
                for line in lines.feed(chunk) if chunk else lines.end():
                    result = self._watch_result(endpoint, line)
                    if result.created and not result.events:
                        created = True  # the acknowledgement, not a change
                        if on_created is not None:
                            on_created()
                        continue
                    events = tuple(
                        Event("delete" if e.type == "DELETE" else "put", e.kv)
                        for e in result.events
                    )
                    yield WatchBatch(result.header.revision, events, progress=not events)
                if not chunk:
                    raise EtcdUnavailable(f"{endpoint}: watch stream ended")
        except EtcdUnavailable:
            self._move_from(endpoint)  # a watch started again goes to another member first
            raise
        finally:
            response.close()  # not release(): the stream never ends by itself

    @staticmethod
    async def _read(response: aiohttp.ClientResponse, endpoint: str, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                chunk = await response.content.readany()
        except TimeoutError:
            raise WatchIdle(f"{endpoint}: watch silent for {timeout}s") from None
        except aiohttp.ClientError as exc:
            raise EtcdUnavailable(f"{endpoint}: watch broken: {_why(exc)}") from exc
        return chunk  # b"" at the end of the stream

    @staticmethod
    def _watch_result(endpoint: str, line: bytes) -> _StreamResult:
        """One message of a watch; an error or a cancel is raised."""
        message = _decode(_StreamLine, line)
        if message.error is not None:
            raise _error(message.error)
        result = message.result
        if result is None:
            raise EtcdError(f"{endpoint}: unexpected watch message {line[:200]!r}")
        if not result.canceled:
            return result
        reason = result.cancel_reason or "no reason given"
        if result.compact_revision:
            raise Compacted(
                f"{endpoint}: watch start compacted (oldest revision {result.compact_revision})",
                compact_revision=result.compact_revision,
            )
        if "no leader" in reason or not result.cancel_reason:
            raise EtcdUnavailable(f"{endpoint}: watch canceled: {reason}", refused=True)
        raise EtcdError(f"{endpoint}: watch canceled: {reason}")

    # -- HTTP ----------------------------------------------------------------------------

    def _session(self, *, fresh: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(fresh)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(force_close=fresh)
            session = self._sessions[fresh] = aiohttp.ClientSession(
                connector=connector, headers=JSON
            )
        return session

    async def _send(
        self, session: aiohttp.ClientSession, url: str, payload: bytes, headers: Any, again: bool
    ) -> tuple[int, bytes]:
        """One POST. A request that finds its kept-alive connection closed by the member (a
        restart the event loop has not noticed yet: the member closed it unanswered, it
        never read the request) goes once more, on a fresh connection."""
        try:
            async with session.post(
                url, data=payload, headers=headers, timeout=self._timeouts
            ) as response:
                return response.status, await response.read()
        except aiohttp.ServerDisconnectedError:
            if not again:
                raise
            fresh = self._session(fresh=True)
            return await self._send(fresh, url, payload, headers, again=False)

    def _rotation(self, only: str | None = None) -> Iterator[tuple[int, str]]:
        """From the endpoint that last answered on, each once (or only `only`)."""
        n, first = len(self.endpoints), self._current  # read once: others may move it
        order = [self.endpoints.index(_endpoint(only))] if only else range(first, first + n)
        for i in order:
            yield i % n, self.endpoints[i % n]

    def _move_from(self, endpoint: str) -> None:
        """The next call should start at another member than this failing one."""
        if self.endpoints[self._current] == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        write: bool,
        leader: bool = True,
        only: str | None = None,
    ) -> bytes:
        """POST to each endpoint in turn (or `only` to that one) until one answers."""
        session, payload = self._session(fresh=False), msgspec.json.encode(body)
        headers, reasons = LEADER if leader else None, []
        for i, endpoint in self._rotation(only):
            try:
                status, data = await self._send(session, endpoint + path, payload, headers, True)
            except NOT_SENT as exc:
                reasons.append(f"{endpoint}: {_why(exc)}")
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                if write:
                    raise EtcdUnavailable(
                        f"{endpoint}{path}: {_why(exc)}; the write may have been applied",
                        outcome_unknown=True,
                    ) from exc
                reasons.append(f"{endpoint}: {_why(exc)}")
                continue
            if status == 200:
                self._current = i
                return data
            error = _error(data, status)
            if isinstance(error, EtcdUnavailable):
                if not write or error.refused:
                    reasons.append(f"{endpoint}: {error}")
                    continue
                error.outcome_unknown = True
            self._current = i
            raise error
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(reasons), refused=True)

    async def _open_stream(
        self, path: str, body: dict[str, Any]
    ) -> tuple[aiohttp.ClientResponse, str]:
        """Start a streamed POST on the first endpoint that takes it (it is only a read)."""
        session, payload, reasons = self._session(fresh=True), msgspec.json.encode(body), []
        stream = aiohttp.ClientTimeout(total=None, sock_connect=self._timeouts.sock_connect)
        for i, endpoint in self._rotation():
            try:
                async with asyncio.timeout(self.timeout):
                    response = await session.post(
                        endpoint + path, data=payload, headers=LEADER, timeout=stream
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                reasons.append(f"{endpoint}: {_why(exc)}")
                continue
            if response.status == 200:
                self._current = i
                return response, endpoint
            async with response:
                error = _error(await response.read(), response.status)
            if not isinstance(error, EtcdUnavailable):
                raise error
            reasons.append(f"{endpoint}: {error}")
        raise EtcdUnavailable(
            "no etcd endpoint took the watch: " + "; ".join(reasons), refused=True
        )
