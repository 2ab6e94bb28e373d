"""Discovery through the sidecar: the master's read answers, cached and kept current.

The service beside the sidecar asks it, on its own port, what it would ask the master:
`/v1/services?tag=&name=&status=`, the Consul read view and the Prometheus targets. Each
distinct question (the path and its query, without `index`, `wait` and `token`) is one
entry, kept current by one watcher: a blocking query to the master that follows the
index the master gives, as Consul's agent cache keeps one background refresh per key
(`agent/cache/`). The first request for a question fetches it (a plain GET) and starts its
watcher; every later one is answered from the entry, blocking queries included (they wait
on the entry's change, as at the master), with the master's own body, status and index
headers. While the master is unreachable the entry keeps answering, with how stale it is:
`X-Picoapi-Stale: SECONDS` (as the master says it of its store) and, on the Consul routes,
`X-Consul-LastContact` in milliseconds and `X-Consul-KnownLeader: false`.

Bounded: MAX_QUESTIONS watched questions (a question past them is passed through to the
master, not cached: its answer is still right, it only loses the cover of an outage);
CACHE_BYTES of cached answers (the least recently used question is dropped first; an
answer over ANSWER_MAX is passed through); MAX_HELD clients held at once (blocking queries,
first fetches, pass-throughs; past it 503 with Retry-After, as the master answers a full
set of watchers). A question nobody asked for `sidecar.discovery_idle` loses its watcher
and its answer. Nothing runs and nothing is held until the first question: an idle sidecar
has no watcher, no session, no entry.

The sidecar reads with its own credentials (`master.token`) and TLS settings, whatever a
caller sends: a caller's token is not passed on. This cache owns every watcher task; the
sidecar's owner (sidecar.app) stops it, and with it every watcher, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from master.model import FieldError, format_duration, format_time, parse_duration
from master.shared.capped import CHUNK, read_capped
from sidecar.config import MasterLink
from sidecar.master_client import MASTER_TIMEOUT, describe_failure

log = structlog.get_logger("sidecar.discovery")

MAX_QUESTIONS: Final = 64
CACHE_BYTES: Final = 8 << 20
ANSWER_MAX: Final = 4 << 20  # half the cache: one answer never pushes out all the others
MAX_HELD: Final = 128  # of the sidecar's 256 connections: /health and /status keep room
MAX_PASSING: Final = 32  # pass-throughs in flight: each holds a connection to the master
QUERY_MAX: Final = 4096  # bytes of query string
WATCH_WAIT: Final = 30.0  # each watcher's blocking query to the master
WAIT_DEFAULT: Final = 300.0  # a client's `wait`, default and limit, as at the master
WAIT_MAX: Final = 300.0
# While the master is away each watcher retries this often (equal jitter, doubling to the
# cap): a master back from a restart is seen within RETRY_CAP, and its changes with it.
RETRY_FIRST: Final = 0.1
RETRY_CAP: Final = 0.5
RETRY_AFTER_CAP: Final = 5.0  # a master's Retry-After (a full set of watchers) is honoured
# A blocking query the master answered at once with an unchanged index: it did not block
# (an index it does not know); the watcher pauses this long before asking again.
SPIN_PAUSE: Final = 1.0
RETRY_AFTER: Final = "1"  # what the sidecar's own 503s say

INDEX: Final = "X-Picoapi-Index"
STALE: Final = "X-Picoapi-Stale"
CACHE: Final = "X-Picoapi-Cache"  # hit (from the cache), miss (fetched now), pass (through)
CONSUL_INDEX: Final = "X-Consul-Index"
RELAYED: Final = (
    "Content-Type",
    INDEX,
    STALE,
    CONSUL_INDEX,
    "X-Consul-KnownLeader",
    "X-Consul-LastContact",
    "Retry-After",
    "WWW-Authenticate",
)
NOT_IN_QUESTION: Final = frozenset({"index", "wait", "token"})
USER_AGENT: Final = "picoapi-sidecar (discovery)"


@dataclass(frozen=True, slots=True)
class Route:
    """What a route's blocking query follows. `shown`: the index clients see and block on;
    `follow`: the one the watcher sends back as `index=`; `per_name`: the master's rule for
    one service (wait while the index is at or below N; else, wait while it equals N);
    `consul`: Consul's staleness headers too."""

    shown: str
    follow: str
    per_name: bool = False
    consul: bool = False


ROUTES: Final = {
    "/v1/services": Route(INDEX, INDEX),
    "/v1/prometheus/targets": Route(INDEX, INDEX),
    # The catalog's Consul index is never below 1; the registry's index is the one to follow.
    "/v1/catalog/services": Route(CONSUL_INDEX, INDEX, consul=True),
    "/v1/catalog/service/{name}": Route(CONSUL_INDEX, CONSUL_INDEX, per_name=True, consul=True),
    "/v1/health/service/{name}": Route(CONSUL_INDEX, CONSUL_INDEX, per_name=True, consul=True),
}
"""The questions the sidecar answers, by the master's route template."""


class DiscoveryError(Exception):
    """An answer of the sidecar's own, rendered by the server's error middleware."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.retry_after = field, retry_after


# --- what is asked, what was answered ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Question:
    route: Route
    path: str  # as the caller sent it (percent-encoded)
    query: tuple[tuple[str, str], ...]  # sorted by key; a key's values in their order

    @property
    def text(self) -> str:
        return self.target(None, None)

    def target(self, index: int | None, wait: float | None) -> str:
        pairs = list(self.query)
        if index is not None:
            pairs.append(("index", str(index)))
            if wait is not None:
                pairs.append(("wait", format_duration(wait)))
        encoded = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
        return f"{self.path}?{encoded}" if encoded else self.path


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer of the master, as it gave it."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]  # the RELAYED ones
    shown: int  # the route's index that clients see
    follow: int  # the index the watcher asks past
    master_stale: float | None  # the master's own X-Picoapi-Stale (its store was away)

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers)


@dataclass(frozen=True, slots=True)
class Failure:
    """No master answered: why, and whether one held our blocking query until it broke
    (then the answer we hold was current until now)."""

    reasons: tuple[str, ...]
    held_until_now: bool = False
    retry_after: float = 0.0


class TooLarge:
    """The answer is over ANSWER_MAX: it is passed through, never cached."""


TOO_LARGE: Final = TooLarge()
Result = Answer | Failure | TooLarge


def parse_question(request: web.Request) -> tuple[Question, int | None, float]:
    """The question, and the blocking query's index and wait (checked as the master checks
    them); the rest of the query goes to the master as given, for it to judge."""
    if len(request.rel_url.raw_query_string) > QUERY_MAX:
        raise DiscoveryError(414, "query_too_long", f"the query is over {QUERY_MAX} bytes")
    resource = request.match_info.route.resource
    route = ROUTES[resource.canonical if resource is not None else ""]
    query = request.query
    pairs = sorted(
        ((k, v) for k, v in query.items() if k not in NOT_IN_QUESTION), key=lambda kv: kv[0]
    )
    question = Question(route, request.rel_url.raw_path, tuple(pairs))
    index_text = query.get("index")
    if index_text is None:
        return question, None, 0.0
    if not index_text.isdigit() or len(index_text) > 18:
        raise DiscoveryError(
            400,
            "bad_request",
            f"must be a non-negative integer, got {index_text!r}",
            field="index",
        )
    wait = WAIT_DEFAULT
    if "wait" in query:
        try:
            wait = parse_duration(query["wait"], "wait")
        except FieldError as exc:
            raise DiscoveryError(400, "bad_request", exc.message, field="wait") from None
    return question, int(index_text), min(wait, WAIT_MAX)


def must_wait(route: Route, current: int, index: int) -> bool:
    """Whether a client blocking on `index` waits while the answer's index is `current`.
    As the master does: one service's query waits while its index is not past the client's
    (a client may give the catalog's index); the others while it is the same (an index the
    master no longer has, after a restart on an empty store, answers at once)."""
    return current <= index if route.per_name else current == index


def _index(headers: Mapping[str, str], name: str) -> int:
    text = headers.get(name, "")
    return int(text) if text.isdigit() and len(text) <= 18 else 0


def _stale_of(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers[STALE]) if STALE in headers else None
    except ValueError:
        return None


def retry_delay(failures: int) -> float:
    ceiling = min(RETRY_CAP, RETRY_FIRST * 2 ** min(max(failures, 1) - 1, 8))
    return random.uniform(ceiling / 2, ceiling)


# --- one question ------------------------------------------------------------------------


@dataclass(eq=False)
class Entry:
    question: Question
    used_at: float  # monotonic: when a client last asked
    answer: Answer | None = None
    first: asyncio.Event = field(default_factory=asyncio.Event)  # the first fetch is done
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced at each change
    reachable: bool = True  # the watcher's last query went through
    contact_at: float = 0.0  # monotonic: the answer is known current up to then
    failures: int = 0  # consecutive
    held: int = 0  # clients waiting on it now
    dropped: str | None = None  # why it is gone (then `outcome` for those still waiting)
    outcome: Answer | Failure | TooLarge | None = None
    task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def stale_for(self, now: float) -> float | None:
        """Seconds the answer may be behind the master; None while the master answers."""
        if self.reachable or self.answer is None:
            return None
        return (self.answer.master_stale or 0.0) + max(0.0, now - self.contact_at)


# --- the cache -----------------------------------------------------------------------------


class Discovery:
    """Every question's entry and watcher. `link` gives the master link in force (a reload
    changes it), `idle` the `sidecar.discovery_idle` in force."""

    def __init__(self, link: Callable[[], MasterLink], idle: Callable[[], float]) -> None:
        self._link = link
        self._idle = idle
        self._entries: dict[Question, Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._preferred: str | None = None  # the master URL that answered last
        self._bytes = 0
        self._held = 0
        self._passing = 0
        self._closing = False
        # What /status and /metrics show: counts since start, and the master as last seen.
        self.answers: dict[str, int] = {}  # by how: hit, miss, pass, unavailable, busy
        self.dropped: dict[str, int] = {}  # by why: idle, evicted, too_large, refused, ...
        self.started = 0
        self.master_queries = 0
        self.master_failures = 0
        self.reachable: bool | None = None
        self.reachable_since: float | None = None
        self.unreachable_error: str | None = None

    # --- answering -----------------------------------------------------------------------

    async def answer(self, request: web.Request) -> web.StreamResponse:
        if self._closing:
            raise DiscoveryError(503, "stopping", "the sidecar is stopping", retry_after="1")
        question, index, wait = parse_question(request)
        entry = self._entries.get(question)
        how = "hit"
        if entry is None:
            if len(self._entries) >= MAX_QUESTIONS:
                return await self._pass_through(request, question, index, wait)
            entry = self._start(question)
        entry.used_at = time.monotonic()
        if not entry.first.is_set():
            how = "miss"
            with self._holding(entry):
                await entry.first.wait()  # the watcher's first fetch is bounded by its timeouts
        answer = entry.answer
        if (
            answer is not None
            and index is not None
            and must_wait(question.route, answer.shown, index)
        ):
            with self._holding(entry):
                answer = await self._wait(entry, index, wait)
        if answer is None:  # nothing to keep: refused, too large, or no master answered
            return await self._without_entry(request, entry, index, wait)
        self._count(how)
        return self._render(entry, answer, how)

    async def _without_entry(
        self, request: web.Request, entry: Entry, index: int | None, wait: float
    ) -> web.StreamResponse:
        outcome = entry.outcome
        if isinstance(outcome, TooLarge):
            return await self._pass_through(request, entry.question, index, wait)
        if isinstance(outcome, Answer):  # the master refused the question: its answer
            self._count("miss")
            return _response(outcome, "miss")
        reasons = "; ".join(outcome.reasons) if isinstance(outcome, Failure) else "stopped"
        self._count("unavailable")
        raise DiscoveryError(
            503,
            "master_unreachable",
            f"no answer cached for {entry.question.text} and no master answered: {reasons}",
            retry_after=RETRY_AFTER,
        )

    async def _wait(self, entry: Entry, index: int, wait: float) -> Answer | None:
        """Until the entry's index passes the client's, or `wait`, or the entry is gone
        (then what it last held, or None if that was a refusal or too large to keep)."""
        deadline = time.monotonic() + wait
        while not self._closing and entry.dropped is None and entry.answer is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not must_wait(entry.question.route, entry.answer.shown, index):
                break
            changed = entry.changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()
        return entry.answer

    @contextlib.contextmanager
    def _holding(self, entry: Entry | None) -> Iterator[None]:
        if self._held >= MAX_HELD:
            raise self._busy(f"{MAX_HELD} discovery queries are already waiting at this sidecar")
        self._held += 1
        if entry is not None:
            entry.held += 1
        try:
            yield
        finally:
            self._held -= 1
            if entry is not None:
                entry.held -= 1
                entry.used_at = time.monotonic()

    def _render(self, entry: Entry, answer: Answer, how: str) -> web.Response:
        response = _response(answer, how)
        stale = entry.stale_for(time.monotonic())
        if stale is not None:
            response.headers[STALE] = f"{stale:.1f}"
            if entry.question.route.consul:
                response.headers["X-Consul-LastContact"] = str(int(stale * 1000))
                response.headers["X-Consul-KnownLeader"] = "false"
        return response

    def _busy(self, message: str) -> DiscoveryError:
        """A cap on held requests is reached: 503, as the master answers a full set of
        watchers."""
        self._count("busy")
        return DiscoveryError(503, "too_many_waiters", message, retry_after=RETRY_AFTER)

    def _count(self, how: str) -> None:
        self.answers[how] = self.answers.get(how, 0) + 1

    # --- not cached: through to the master ----------------------------------------------

    async def _pass_through(
        self, request: web.Request, question: Question, index: int | None, wait: float
    ) -> web.StreamResponse:
        """The caller's question, blocking as asked, to the master; its answer streamed
        back as it comes. Neither cached nor watched."""
        if self._passing >= MAX_PASSING:
            raise self._busy(
                f"{MAX_PASSING} discovery queries are already passing through to the master"
            )
        with self._holding(None):
            self._passing += 1
            try:
                return await self._relay(request, question, index, wait)
            finally:
                self._passing -= 1

    async def _relay(
        self, request: web.Request, question: Question, index: int | None, wait: float
    ) -> web.StreamResponse:
        link = self._link()
        reasons: list[str] = []
        timeout = aiohttp.ClientTimeout(total=(wait if index is not None else 0) + MASTER_TIMEOUT)
        urls = self._urls(link)
        for base in urls:
            try:
                async with self._ask(link, base, question, index, wait, timeout) as upstream:
                    if upstream.status >= 500 and base != urls[-1]:
                        reasons.append(f"{base}: {upstream.status}")
                        continue
                    response = web.StreamResponse(status=upstream.status)
                    for name in RELAYED:
                        if name in upstream.headers:
                            response.headers[name] = upstream.headers[name]
                    response.headers[CACHE] = "pass"
                    await response.prepare(request)
                    try:
                        async for chunk in upstream.content.iter_chunked(CHUNK):
                            await response.write(chunk)
                        await response.write_eof()
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        # The answer has begun: no other (nor an error) can follow it on
                        # this connection. Cut it, so the client sees a broken answer,
                        # never a short one that looks whole.
                        log.warning(
                            "discovery_pass_through_cut",
                            question=question.text,
                            reason=describe_failure(exc),
                        )
                        if request.transport is not None:
                            request.transport.abort()
                        self._count("unavailable")
                        return response
                    self._count("pass")
                    return response
            except TimeoutError:
                reasons.append(f"{base}: no answer within {format_duration(timeout.total or 0)}")
            except (aiohttp.ClientError, OSError) as exc:
                reasons.append(f"{base}: {describe_failure(exc)}")
        self._count("unavailable")
        raise DiscoveryError(
            503,
            "master_unreachable",
            f"{question.text} is not cached here and no master answered: {'; '.join(reasons)}",
            retry_after=RETRY_AFTER,
        )

    # --- the watchers ----------------------------------------------------------------------

    def _start(self, question: Question) -> Entry:
        entry = Entry(question, time.monotonic())
        self._entries[question] = entry
        entry.task = asyncio.create_task(self._watch(entry), name="sidecar-discovery-watch")
        self._tasks.add(entry.task)
        entry.task.add_done_callback(self._tasks.discard)
        self.started += 1
        log.info("discovery_question_started", question=question.text)
        return entry

    async def _watch(self, entry: Entry) -> None:
        """The entry's one loop: fetch, then follow the index until unused or dropped."""
        try:
            await self._first_fetch(entry)
            while entry.dropped is None:
                wait = self._watch_wait(entry)
                if wait is None:
                    self._drop(entry, "idle")
                    return
                index = entry.answer.follow if entry.answer and entry.reachable else None
                asked = time.monotonic()
                result = await self._query(entry.question, index, wait)
                if entry.dropped is not None:
                    return
                if isinstance(result, TooLarge):
                    self._drop(entry, "too_large", result)
                elif isinstance(result, Answer) and result.status < 500:
                    if result.status != 200:  # refused now (a token revoked): say so
                        self._drop(entry, "refused", result)
                        return
                    if self._keep(entry, result) or index is None:
                        continue
                    if time.monotonic() - asked < min(SPIN_PAUSE, wait / 2):
                        await asyncio.sleep(random.uniform(SPIN_PAUSE / 2, SPIN_PAUSE))
                else:
                    failure = result if isinstance(result, Failure) else _failure_of(result)
                    self._failed(entry, failure, index is not None)
                    delay = max(retry_delay(entry.failures), failure.retry_after)
                    await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discovery_watch_failed", question=entry.question.text)
            self._drop(entry, "failed")
        finally:
            self._drop(entry, "stopped")

    async def _first_fetch(self, entry: Entry) -> None:
        try:
            result = await self._query(entry.question, None, None)
            if isinstance(result, Answer) and result.status == 200:
                self._keep(entry, result)
            elif isinstance(result, Failure):
                self._failed(entry, result, False)
                self._drop(entry, "unreachable", result)
            else:
                self._drop(entry, "too_large" if result is TOO_LARGE else "refused", result)
        finally:
            entry.first.set()

    def _watch_wait(self, entry: Entry) -> float | None:
        """How long the next blocking query may wait; None once the entry is unused."""
        idle_left = entry.used_at + self._idle() - time.monotonic()
        if entry.held == 0 and idle_left <= 0:
            return None
        return WATCH_WAIT if entry.held else max(1.0, min(WATCH_WAIT, idle_left))

    def _keep(self, entry: Entry, answer: Answer) -> bool:
        """Hold the new answer; wake the entry's waiters if its index moved. True if it did."""
        old = entry.answer
        self._bytes += answer.size - (old.size if old else 0)
        entry.answer = answer
        entry.contact_at = time.monotonic()
        entry.failures = 0
        if not entry.reachable:
            entry.reachable = True
        self._reached(True)
        self._evict(keep=entry)
        moved = old is None or old.shown != answer.shown
        if moved:
            entry.wake()
        return moved

    def _failed(self, entry: Entry, failure: Failure, was_blocking: bool) -> None:
        entry.failures += 1
        self.master_failures += 1
        if entry.reachable:
            entry.reachable = False
            if was_blocking and failure.held_until_now:
                entry.contact_at = time.monotonic()
        self._reached(False, "; ".join(failure.reasons))

    def _reached(self, ok: bool, error: str | None = None) -> None:
        if ok != self.reachable:
            self.reachable, self.reachable_since = ok, time.time()
            if ok:
                log.info("discovery_master_reachable")
            else:
                log.warning("discovery_master_unreachable", reason=error)
        self.unreachable_error = None if ok else error

    def _evict(self, keep: Entry) -> None:
        """Least recently used first, until the cached answers fit in CACHE_BYTES; a
        question with clients held on it is in use now (its `used_at` is when they asked):
        it goes only once no other is left, as dropping it answers them at once."""
        while self._bytes > CACHE_BYTES:
            others = [e for e in self._entries.values() if e is not keep and e.answer]
            if not others:
                return
            victim = min(others, key=lambda e: (e.held > 0, e.used_at))
            self._drop(victim, "evicted")
            if victim.task is not None:
                victim.task.cancel()

    def _drop(self, entry: Entry, why: str, outcome: Result | None = None) -> None:
        """Forget the entry (once): its bytes, its slot; wake those waiting on it, who answer
        with what it holds (or `outcome`)."""
        if entry.dropped is not None:
            return
        entry.dropped, entry.outcome = why, outcome
        if self._entries.get(entry.question) is entry:
            del self._entries[entry.question]
        if entry.answer is not None:
            self._bytes -= entry.answer.size
        if isinstance(outcome, TooLarge | Answer) and entry.answer is not None:
            entry.answer = None  # the waiters pass through, or get the refusal
        self.dropped[why] = self.dropped.get(why, 0) + 1
        entry.wake()
        if why != "stopped":
            log.info("discovery_question_dropped", question=entry.question.text, reason=why)

    # --- the master ----------------------------------------------------------------------

    async def _query(self, question: Question, index: int | None, wait: float | None) -> Result:
        """The question to the masters in turn, from the one that answered last; a master's
        5xx moves on to the next. An Answer (any status), TOO_LARGE, or a Failure."""
        link = self._link()
        reasons: list[str] = []
        held = False
        retry_after = 0.0
        blocking = wait if index is not None and wait is not None else 0.0
        timeout = aiohttp.ClientTimeout(total=blocking + MASTER_TIMEOUT)
        urls = self._urls(link)
        self.master_queries += 1
        for base in urls:
            sent = _Sent()
            try:
                async with self._ask(link, base, question, index, wait, timeout, sent) as response:
                    body, more = await read_capped(response.content, ANSWER_MAX)
                    if more:
                        return TOO_LARGE
                    answer = _answer_of(question.route, response.status, response.headers, body)
                    if response.status >= 500 and base != urls[-1]:
                        reasons.append(f"{base}: {response.status}")
                        retry_after = max(retry_after, _retry_after(response.headers))
                        continue
                    self._preferred = base
                    return answer
            except TimeoutError:  # silence: no sign of the master since the query began
                reasons.append(f"{base}: no answer within {format_duration(timeout.total or 0)}")
            except (aiohttp.ClientError, OSError) as exc:
                # A blocking query on the wire that broke (a master killed): it was holding
                # it, so the answer was current until now. (aiohttp retries a GET whose
                # reused connection broke, so the error may be the retry's refused connect.)
                held = held or (blocking > 0 and sent.at is not None)
                reasons.append(f"{base}: {describe_failure(exc)}")
        return Failure(tuple(reasons), held, retry_after)

    def _ask(
        self,
        link: MasterLink,
        base: str,
        question: Question,
        index: int | None,
        wait: float | None,
        timeout: aiohttp.ClientTimeout,
        sent: _Sent | None = None,
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The question to one master, with the sidecar's credentials and TLS settings."""
        return self._client().get(
            URL(base + question.target(index, wait), encoded=True),
            headers=_headers(link),
            timeout=timeout,
            ssl=_tls(link),
            trace_request_ctx=sent,
        )

    def _urls(self, link: MasterLink) -> list[str]:
        urls = list(link.urls)
        if self._preferred in urls:
            at = urls.index(self._preferred)
            urls = urls[at:] + urls[:at]
        return urls

    def _client(self) -> aiohttp.ClientSession:
        """The discovery's own session, made at the first question: its long polls never
        take the connections the registration and the checks need."""
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_headers_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_QUESTIONS + MAX_PASSING, ttl_dns_cache=60),
                trace_configs=[trace],
            )
        return self._session

    # --- stop, and what /status and /metrics show ------------------------------------------

    async def close(self) -> None:
        """Answer every waiting client now, stop every watcher, close the session."""
        self._closing = True
        for entry in list(self._entries.values()):
            entry.wake()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    @property
    def questions(self) -> int:
        return len(self._entries)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    @property
    def waiting(self) -> int:
        return self._held

    def figures(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "questions": len(self._entries),
            "watchers": len(self._tasks),
            "cached_bytes": self._bytes,
            "waiting": self._held,
            "passing_through": self._passing,
            "limits": {
                "questions": MAX_QUESTIONS,
                "cached_bytes": CACHE_BYTES,
                "answer_bytes": ANSWER_MAX,
                "waiting": MAX_HELD,
                "passing_through": MAX_PASSING,
                "idle_s": self._idle(),
            },
            "answers": dict(sorted(self.answers.items())),
            "started": self.started,
            "dropped": dict(sorted(self.dropped.items())),
            "master_queries": self.master_queries,
            "master_failures": self.master_failures,
            "master": {
                "reachable": self.reachable,
                "since": format_time(self.reachable_since) if self.reachable_since else None,
                "error": self.unreachable_error,
            },
            "watched": [
                {
                    "question": entry.question.text,
                    "index": entry.answer.shown if entry.answer else None,
                    "bytes": entry.answer.size if entry.answer else 0,
                    "waiting": entry.held,
                    "unused_for_s": round(now - entry.used_at, 1),
                    "stale_for_s": None if (s := entry.stale_for(now)) is None else round(s, 1),
                }
                for entry in self._entries.values()
            ],
        }


class _Sent:
    """When a query's request went out on a connection (set by the session's trace)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None


async def _headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    sent = context.trace_request_ctx
    if isinstance(sent, _Sent):
        sent.at = time.monotonic()


def _answer_of(route: Route, status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    kept = tuple((name, headers[name]) for name in RELAYED if name in headers)
    return Answer(
        status,
        body,
        kept,
        _index(headers, route.shown),
        _index(headers, route.follow),
        _stale_of(headers),
    )


def _failure_of(answer: Answer) -> Failure:
    """A master's 5xx to a watcher: nothing new to keep; try again after its Retry-After."""
    message = answer.body[:200].decode("utf-8", "replace").strip()
    retry = _retry_after(CIMultiDict(answer.headers))
    return Failure((f"{answer.status} {message}",), retry_after=retry)


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return min(RETRY_AFTER_CAP, max(0.0, float(headers.get("Retry-After", "0"))))
    except ValueError:
        return 0.0


def _response(answer: Answer, how: str) -> web.Response:
    response = web.Response(
        body=answer.body, status=answer.status, headers=CIMultiDict(answer.headers)
    )
    response.headers[CACHE] = how
    return response


def _headers(link: MasterLink) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if link.token:
        headers["Authorization"] = f"Bearer {link.token}"
    return headers


def _tls(link: MasterLink) -> ssl.SSLContext | bool:
    return link.ssl if link.ssl is not None else True
