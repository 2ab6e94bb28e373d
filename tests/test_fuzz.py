"""Schemathesis against the master's own `/openapi.json`, through a live master on loopback.

Every operation the document names is sent generated requests, valid and invalid
(schemathesis' examples, coverage and fuzzing phases, a fixed seed, derandomized, a bounded
number of examples each), and every answer must be: no 5xx, a documented status, a body
that matches the documented schema, a documented content type, documented headers. The
same runs against a master with write and read tokens, once sending the write token (the
authenticated path) and once sending none (every guarded route must answer a documented
401). A stateful run follows the links between operations (PUT, then GET and DELETE of
what it made), as far as a bounded number of steps goes.

Two things are changed in a generated request before it is sent, neither of them a check:
- a blocking query (`index=`) that would wait longer than `BLOCK_CAP` waits `BLOCK_CAP`
  (a generated index past the registry's would otherwise hold the request for 5 minutes);
- a check URL in a generated registration that does not name a loopback address is pointed
  at 127.0.0.1 (same scheme, port and path), so the master's health checks of fuzzed
  services never leave this machine, nor resolve a generated name.

Each finding is also a plain regression test below (the exact request, the documented
answer); one not fixed yet in the master is marked xfail(strict=True).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed: pip install -e '.[test]'"
)

import jsonschema  # type: ignore[import-untyped]  # noqa: E402 - after the skip
from schemathesis import checks as st_checks  # noqa: E402
from schemathesis.engine import StopReason  # noqa: E402
from schemathesis.engine import events as st_events  # noqa: E402
from yarl import URL  # noqa: E402

from master.model import parse_duration  # noqa: E402
from tests.conftest import BIN, Master  # noqa: E402

SEED: Final = 20261201
EXAMPLES: Final = 30  # per operation and phase that takes a number (fuzzing)
REQUEST_TIMEOUT: Final = 10.0
BLOCK_CAP: Final = 0.2  # seconds a generated blocking query may wait
STATEFUL_STEPS: Final = 10
RUN_DEADLINE: Final = 150.0  # seconds for one run, a bound: a run takes ~30 s
# (not schemathesis' max-time: given one, it repeats fuzzing until the time is spent)
WRITE_TOKEN: Final = "fuzz-write-token"
READ_TOKEN: Final = "fuzz-read-token"
LOOPBACK: Final = "127.0.0.1"

CHECKS: Final = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
]

# (run, operation, status) -> how many answers: printed at the end, so a run shows what
# it reached (a fuzz that only ever met 400s tested little).
STATS: Counter[tuple[str, str, int]] = Counter()


def _config(headers: dict[str, str] | None = None) -> Any:
    data: dict[str, Any] = {
        "seed": SEED,
        "generation": {
            "mode": "all",
            "max-examples": EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "checks": {
            "enabled": False,
            **{check.__name__: {"enabled": True} for check in CHECKS},
        },
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
        "workers": 1,
        "request-timeout": REQUEST_TIMEOUT,
        "warnings": False,
    }
    if headers:
        data["headers"] = headers
    return schemathesis.Config.from_dict(data)


def _master_supports(option: str) -> bool:
    done = subprocess.run(
        [str(BIN / "picoapi-master"), "--help"], capture_output=True, text=True, timeout=30
    )
    return option in done.stdout


def _start_master(tmp: Path, name: str, *args: str) -> Master:
    extra: list[str] = []
    if _master_supports("--check-allow"):
        extra = ["--check-allow", "127.0.0.0/8,::1/128"]  # belt and braces: see _tame()
    argv = [
        str(BIN / "picoapi-master"),
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--store",
        f"sqlite:///{tmp}/{name}.db",
        *extra,
        *args,
    ]
    return Master(argv, tmp / f"{name}.log").start_wait()


@pytest.fixture(scope="module")
def open_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    master = _start_master(tmp_path_factory.mktemp("fuzz-open"), "open")
    yield master
    master.stop()


@pytest.fixture(scope="module")
def token_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    tmp = tmp_path_factory.mktemp("fuzz-token")
    (tmp / "tokens").write_text(f"# writes\n{WRITE_TOKEN}\n")
    (tmp / "read-tokens").write_text(f"{READ_TOKEN}\n")
    master = _start_master(
        tmp,
        "token",
        "--token-file",
        str(tmp / "tokens"),
        "--read-token-file",
        str(tmp / "read-tokens"),
    )
    yield master
    master.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module", params=["open", "authenticated", "anonymous"])
def api_schema(request: pytest.FixtureRequest) -> Any:
    """The master's document, loaded from the master itself, for one of three runs."""
    run: str = request.param
    if run == "open":
        master: Master = request.getfixturevalue("open_master")
        schema = schemathesis.openapi.from_url(
            master.url + "/openapi.json", config=_config(), timeout=REQUEST_TIMEOUT
        )
    else:
        master = request.getfixturevalue("token_master")
        sent = _bearer(WRITE_TOKEN) if run == "authenticated" else None
        schema = schemathesis.openapi.from_url(
            master.url + "/openapi.json",
            config=_config(sent),
            headers=_bearer(READ_TOKEN),  # to read the document; the calls send `sent`
            timeout=REQUEST_TIMEOUT,
        )
    schema.config.update(base_url=master.url)
    schema.fuzz_run = run
    schema.fuzz_master = master
    return schema


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _local_url(value: Any) -> Any:
    """A check URL that cannot make the master reach past loopback (see the docstring)."""
    if not isinstance(value, str):
        return value
    try:
        url = URL(value)
        if url.host is None or _is_loopback(url.host):
            return value
        return str(url.with_host(LOOPBACK))
    except (ValueError, TypeError):
        return value  # the master's own parser (yarl as well) cannot take it either


def _bound_wait(query: dict[str, Any]) -> None:
    if "index" not in query:
        return
    waits = query.get("wait")
    values = waits if isinstance(waits, list) else [waits]
    for value in values:
        if value is None:
            seconds = float("inf")  # the default wait: 5 minutes
        else:
            try:
                seconds = parse_duration(str(value), "wait")
            except Exception:  # refused at once by the master: nothing to bound
                continue
        if seconds > BLOCK_CAP:
            query["wait"] = f"{int(BLOCK_CAP * 1000)}ms"
            return


def _tame(case: Any) -> None:
    """Bound blocking queries, keep health checks on loopback: both before any call."""
    if isinstance(case.query, dict):
        _bound_wait(case.query)
    body = case.body
    if isinstance(body, dict):
        for key in ("check", "healthcheck"):  # /v1/services/{id}, picoapi's /register
            section = body.get(key)
            if isinstance(section, dict) and "url" in section:
                section["url"] = _local_url(section["url"])


def _before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    _tame(case)
    kwargs.setdefault("timeout", REQUEST_TIMEOUT)


@pytest.fixture(scope="module")
def tamed_calls() -> Iterator[None]:
    """`_tame` every generated request before schemathesis sends it (a global hook: the
    one place schemathesis runs code before each call, in every phase)."""
    hook = schemathesis.hook("before_call")(_before_call)
    yield
    schemathesis.hooks.GLOBAL_HOOK_DISPATCHER.unregister(hook)


class Finding:
    """One distinct failure: the operation, what went wrong, and the request that showed it."""

    def __init__(self, label: str, title: str, message: str, request: str) -> None:
        self.label, self.title, self.message, self.request = label, title, message, request

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.label, self.title, self.message.split("\n", 1)[0][:200])

    def known(self) -> str | None:
        """The regression test tracking this finding, if it is one not fixed yet."""
        for (label, title, start), test in KNOWN.items():
            if self.label == label and self.title == title and self.message.startswith(start):
                return test
        return None

    def __str__(self) -> str:
        return f"{self.label}: {self.title}: {self.message}\n    {self.request}"


# Findings the master has not fixed yet: (operation, failure title, message start) -> the
# strict-xfail regression test below that sends the exact request. The fuzz reports any
# other failure; the regression test, not the fuzz, says when one of these is fixed
# (it XPASSes, strictly: then delete it from here and its xfail mark).
KNOWN: Final[dict[tuple[str, str, str], str]] = {}


def _request_text(case: Any) -> str:
    try:
        return str(case.as_curl_command())
    except Exception:  # a case that cannot be shown as curl is still a finding
        return f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"


def _run(schema: Any, run: str) -> list[Finding]:
    """Every phase schemathesis has (probing, examples, coverage, fuzzing, stateful) on one
    worker, as `st run` would; every distinct failure and error."""
    findings: dict[tuple[str, str, str], Finding] = {}

    def add(finding: Finding) -> None:
        findings.setdefault(finding.key, finding)

    stop_reason = None
    deadline = time.monotonic() + RUN_DEADLINE
    stream = schemathesis.engine.from_schema(schema).execute()
    for event in stream:
        if time.monotonic() > deadline and stop_reason is None:
            add(Finding(run, "deadline", f"the run took over {RUN_DEADLINE:.0f} s", ""))
            stop_reason = StopReason.MAX_TIME
            stream.stop()
        if isinstance(event, st_events.ScenarioFinished):
            recorder = event.recorder
            for case_id, interaction in recorder.interactions.items():
                if interaction.response is not None:
                    label = recorder.cases[case_id].value.operation.label
                    STATS[(run, label, interaction.response.status_code)] += 1
            for case_id, nodes in recorder.checks.items():
                case = recorder.cases[case_id].value
                for node in nodes:
                    if node.failure_info is not None:
                        failure = node.failure_info.failure
                        add(
                            Finding(
                                case.operation.label,
                                failure.title,
                                failure.message,
                                _request_text(case),
                            )
                        )
        elif isinstance(event, st_events.NonFatalError):
            add(Finding(event.label, event.info.title, event.info.message, ""))
        elif isinstance(event, st_events.FatalError):
            add(Finding(run, "schemathesis stopped", repr(event.exception), ""))
        elif isinstance(event, st_events.EngineFinished) and stop_reason is None:
            stop_reason = event.stop_reason
    if stop_reason != StopReason.COMPLETED:
        add(Finding(run, "incomplete", f"the run did not complete: {stop_reason}", ""))
    return list(findings.values())


def _summary(run: str) -> str:
    lines = [f"answers of the {run} run, by operation and status:"]
    by_label: dict[str, list[str]] = {}
    for (r, label, status), count in sorted(STATS.items()):
        if r == run:
            by_label.setdefault(label, []).append(f"{status} x{count}")
    lines += [f"  {label:34} {', '.join(parts)}" for label, parts in by_label.items()]
    return "\n".join(lines)


def _log_findings(master: Master) -> list[Finding]:
    """The master logs one JSON event a line: anything else in its log (a traceback, say)
    is a finding, and so is an event at level error or above."""
    found: list[Finding] = []
    block: list[str] = []
    lines = [*master.log_path.read_text(errors="replace").split("\n"), "{}"]
    for line in lines:
        if not line.strip():
            continue  # a blank line ends nothing: tracebacks hold them too
        try:
            event = json.loads(line)
        except ValueError:
            block.append(line)
            continue
        if block:
            text = "\n".join(block)
            found.append(Finding("master log", "not one JSON event a line", text[:2000], ""))
            block = []
        if isinstance(event, dict) and event.get("level") in ("error", "critical", "exception"):
            found.append(Finding("master log", "error event", json.dumps(event)[:2000], ""))
    return found


@pytest.mark.usefixtures("tamed_calls")
def test_every_operation_answers_as_documented(api_schema: Any) -> None:
    run = api_schema.fuzz_run
    master: Master = api_schema.fuzz_master
    findings = _run(api_schema, run)
    assert master.proc.poll() is None, "the master exited under the fuzz"
    assert master.request("GET", "/healthz", headers=_bearer(WRITE_TOKEN)).status == 200
    findings += _log_findings(master)
    print(_summary(run))
    known = [f"{f.label}: {f.title} (tracked by {f.known()})" for f in findings if f.known()]
    if known:
        print("known findings, not fixed yet:\n  " + "\n  ".join(known))
    new = [str(f) for f in findings if not f.known()]
    assert not new, f"{len(new)} findings in the {run} run:\n" + "\n".join(new)
    assert any(r == run for r, _, _ in STATS), "schemathesis sent nothing"


# --- regression tests: each finding of the fuzz, as the exact request ------------------


def _spec_schema(master: Master, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = master.request("GET", "/openapi.json").json()
    return {**spec["components"]["schemas"][name], "components": spec["components"]}


def _assert_conforms(master: Master, value: Any, schema_name: str) -> None:
    jsonschema.validate(
        value, _spec_schema(master, schema_name), cls=jsonschema.Draft202012Validator
    )


JSON_HEADERS: Final = {"Content-Type": "application/json"}


def test_delete_answers_the_removed_record_as_documented(start_master: Any) -> None:
    """Fuzz finding: `DELETE /v1/services/{id}` answered the removed record without
    `create_index` and `modify_index`, which the document's Record requires (the PUT and
    GET answers carry them). The request schemathesis sent: PUT /v1/services/0 with
    {"id": "0", "name": "0", "address": "0", "port": 1}, then DELETE /v1/services/0."""
    master: Master = start_master()
    registration = {"id": "0", "name": "0", "address": "0", "port": 1}
    put = master.request("PUT", "/v1/services/0", registration, headers=JSON_HEADERS)
    assert put.status == 200, put
    _assert_conforms(master, put.json(), "Record")
    removed = master.request("DELETE", "/v1/services/0")
    assert removed.status == 200, removed
    assert removed.headers["content-type"].startswith("application/json")
    _assert_conforms(master, removed.json(), "Record")


def test_a_malformed_request_is_answered_and_logged_as_one_json_event(
    start_master: Any,
) -> None:
    """Fuzz finding: schemathesis' probe `X-Schemathesis-Probe-Null: \\x00` (a NUL in a
    header value) is answered 400 with the JSON error, but the master's log gets
    `aiohttp.server: Error handling request from 127.0.0.1` and a ten-line traceback: not
    one JSON event a line, and any client can write ten lines to the log per request."""
    master: Master = start_master()
    host, port = master.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Probe: \x00\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", answer
    assert json.loads(body)["error"]["code"], answer
    assert master.request("GET", "/healthz").status == 200  # and what it logged is written
    lines = [line for line in master.log_path.read_text().splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, "\n".join(not_json)


@pytest.mark.parametrize("method", ["TRACE", "PUT", "POST", "PATCH", "DELETE"])
def test_a_method_agent_self_does_not_serve_is_405(start_master: Any, method: str) -> None:
    """Fuzz finding (schemathesis' unexpected-method cases): `TRACE /v1/agent/self`
    answered 501 `not_supported` ("read-only catalog"), a 5xx the document does not name.
    /v1/agent/self is served (GET), so a method it does not serve is 405 with Allow, as on
    /v1/catalog/services, /v1/health/service/{name} and every other served path; 501 is
    for the Consul routes the view does not serve at all (/v1/kv/..., agent writes)."""
    master: Master = start_master()
    served = master.request(method, "/v1/catalog/services")
    assert served.status == 405, served  # what every served path answers
    answer = master.request(method, "/v1/agent/self")
    assert answer.status == 405, answer
    assert "GET" in answer.headers.get("allow", ""), answer.headers
    assert answer.json()["error"]["code"] == served.json()["error"]["code"], answer
