"""What the sidecar reads, read with care: the 1 MiB cap on the service file, its parse off
the event loop (a real sidecar keeps answering /health meanwhile), and the watcher's view of
a file it cannot read for a while (its mode) or whose mode alone changed."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from master.shared import yamlfile
from master.shared.daemon import cancel_and_wait
from master.shared.yamlfile import ConfigError
from sidecar import config as config_module
from sidecar import watch
from sidecar.config import FILE_MAX, load_config
from sidecar.watch import ConfigWatcher
from tests.conftest import BIN, Daemon, Master, http_request, wait_until
from tests.service_fixture import unused_port as free_port


def record(master: Master, ident: str) -> dict[str, Any] | None:
    answer = master.request("GET", f"/v1/services/{ident}")
    return answer.json() if answer.status == 200 else None


SERVICE: Final = "service:\n  name: web\n  id: web-1\n  address: 127.0.0.1\n  port: {port}\n"
HEALTH_WITHIN: Final = 0.1  # seconds: /health while a 1 MiB file parses


def service_yaml(tags: str = "[a]", port: int = 8080, extra: str = "") -> str:
    return SERVICE.format(port=port) + f"  tags: {tags}\n{extra}"


def padded(text: str, size: int) -> str:
    """`text` and comment lines after it, `size` bytes in all: a valid file, slow to parse
    (the pure-Python scanner walks every character of a comment)."""
    line = "# " + "padding " * 9 + "\n"
    body = text + line * ((size - len(text)) // len(line))
    return body + "#" * (size - len(body) - 1) + "\n"


# --- the cap -------------------------------------------------------------------------------


def test_a_file_over_the_cap_is_refused_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(padded(service_yaml(), FILE_MAX + 1))
    parsed: list[str] = []
    real = config_module.parse_document
    monkeypatch.setattr(
        config_module, "parse_document", lambda *a: parsed.append("parsed") or real(*a)
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert str(raised.value) == f"{path}: larger than 1 MiB ({FILE_MAX + 1} bytes)"
    assert parsed == []
    path.write_text(padded(service_yaml(), FILE_MAX))  # at the cap: taken
    assert load_config(path, {}).service.tags == ("a",)
    assert parsed == ["parsed"]


def test_a_device_that_never_ends_is_refused_at_the_cap() -> None:
    """/dev/zero says it is empty and never ends: read one byte past the cap, no further."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        load_config("/dev/zero", {})
    assert str(raised.value) == "/dev/zero: larger than 1 MiB (more than 1048576 bytes)"
    assert time.monotonic() - started < 2


# --- the parse, off the event loop ---------------------------------------------------------


def test_health_answers_while_a_large_file_parses(tmp_path: Path) -> None:
    """A real sidecar reloads a valid 1 MiB file (most of a second of pure-Python parsing)
    while /health is asked again and again: every answer comes within 100 ms."""
    port = free_port()
    text = service_yaml(
        extra=f"master:\n  url: http://127.0.0.1:{free_port()}\n"
        f"sidecar:\n  listen: 127.0.0.1:{port}\n  resync: 1h\n"
    )
    path = tmp_path / "service.yaml"
    path.write_text(text)
    sidecar = Daemon(
        [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(path)],
        tmp_path / "sidecar.log",
    )
    try:
        sidecar.wait_for_event("sidecar_started")
        url = f"http://127.0.0.1:{port}/health"
        http_request("GET", url)  # the connection path warmed up
        large = tmp_path / "large.yaml"
        large.write_text(padded(text.replace("tags: [a]", "tags: [a, large]"), FILE_MAX - 1024))
        os.replace(large, path)
        sidecar.signal(signal.SIGHUP)
        started = time.monotonic()
        times: list[float] = []
        while not any(e["event"] == "config_reloaded" for e in sidecar.events()):
            assert time.monotonic() - started < 20, "no reload within 20 s"
            asked = time.perf_counter()
            answer = http_request("GET", url, timeout=5)
            times.append(time.perf_counter() - asked)
            assert answer.status == 503 and answer.json()["check"] == "tcp"
        parse_seconds = time.monotonic() - started
        status = http_request("GET", f"http://127.0.0.1:{port}/status").json()
    finally:
        sidecar.stop()
    assert status["registration"]["tags"] == ["a", "large"]
    assert parse_seconds > 0.2 and len(times) >= 5, (parse_seconds, times)
    assert max(times) < HEALTH_WITHIN, f"slowest /health {max(times) * 1000:.0f} ms: {times}"


def test_a_large_file_is_parsed_by_a_child_exactly_as_in_process(tmp_path: Path) -> None:
    """The child's Document is the one parse_document makes here: values, lines, problems."""
    text = padded(service_yaml("[a, b]") + "  meta: {k: '${HOME:-x}'}\n", 200_000)
    here = yamlfile.parse_document(text, "svc.yaml", {"HOME": "/h"})
    there = watch.ChildParser()(text, "svc.yaml", {"HOME": "/h"})
    assert vars(there) == vars(here)
    assert there.get("service.meta.k") == "/h" and there.line_of("service.tags") == 6
    broken = text.replace("tags: [a, b]", "tags: [a, b")
    with pytest.raises(ConfigError) as in_child:
        watch.ChildParser()(broken, "svc.yaml", {})
    with pytest.raises(ConfigError) as in_process:
        yamlfile.parse_document(broken, "svc.yaml", {})
    assert in_child.value.problems == in_process.value.problems


def test_a_child_that_cannot_run_leaves_the_parse_to_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = padded(service_yaml(), 100_000)
    monkeypatch.setattr(watch.sys, "executable", "/nonexistent/python")
    assert watch.ChildParser()(text, "svc.yaml", {}).get("service.name") == "web"
    monkeypatch.setattr(watch.sys, "executable", "/bin/false")  # runs, says nothing
    assert watch.ChildParser()(text, "svc.yaml", {}).get("service.name") == "web"


async def test_a_watcher_stopped_mid_parse_kills_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "POLL_SECONDS", 0.02)
    path = tmp_path / "service.yaml"
    path.write_text(service_yaml())
    children: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen(*args, **kwargs)
        children.append(child)
        return child

    monkeypatch.setattr(watch.subprocess, "Popen", recording)
    watcher = ConfigWatcher(path, load_config(path), lambda new: None)
    task = asyncio.create_task(watcher.run())
    path.write_text(padded(service_yaml("[big]"), FILE_MAX))
    await eventually(lambda: children)
    started = time.monotonic()
    await cancel_and_wait(task)
    assert time.monotonic() - started < 0.5
    assert children[0].wait(2) == -signal.SIGKILL


# --- the watcher ---------------------------------------------------------------------------


@asynccontextmanager
async def watching(path: Path) -> AsyncIterator[ConfigWatcher]:
    watcher = ConfigWatcher(path, load_config(path), lambda new: None)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        await cancel_and_wait(task)


async def eventually(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout}s: {predicate}")


def edit_keeping_the_stat(path: Path, text: str) -> None:
    """New content of the same size, inode and mtime: only the content changed."""
    before = os.stat(path)
    assert len(text.encode()) == before.st_size
    with open(path, "r+") as handle:
        handle.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


async def test_a_mode_change_is_a_change_of_the_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit the stat does not show, then a chmod: the mode alone says look again."""
    monkeypatch.setattr(watch, "POLL_SECONDS", 0.02)
    path = tmp_path / "service.yaml"
    path.write_text(service_yaml("[a]"))
    path.chmod(0o600)
    async with watching(path) as watcher:
        edit_keeping_the_stat(path, service_yaml("[b]"))
        await asyncio.sleep(0.3)
        assert watcher.current.service.tags == ("a",), "the stat alone shows nothing"
        path.chmod(0o644)
        await eventually(lambda: watcher.current.service.tags == ("b",))


async def test_a_failed_read_is_retried_at_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails with nothing to show for it in the stat (EIO, a mode the stat
    cannot tell): read again at every poll, reported once, and the edit it hid is taken
    once a read succeeds, though the stat has not moved since the failure."""
    monkeypatch.setattr(watch, "POLL_SECONDS", 0.02)
    path = tmp_path / "service.yaml"
    path.write_text(service_yaml("[a]"))
    failing = {"left": 5}
    real = watch.read_file

    def flaky(file: Path) -> bytes:
        if failing["left"]:
            failing["left"] -= 1
            raise watch.FileUnreadable([yamlfile.Problem(str(file), None, "", "cannot read: EIO")])
        return real(file)

    async with watching(path) as watcher:
        monkeypatch.setattr(watch, "read_file", flaky)
        path.write_text(service_yaml("[b]"))  # the one stat change, met by a failing read
        await eventually(lambda: failing["left"] == 0)
        assert watcher.last_error == f"{path}: cannot read: EIO"
        await eventually(lambda: watcher.current.service.tags == ("b",))
        assert watcher.last_error is None


# A file of mode 000 is no obstacle to root, whom the tests run as: the sidecar under test
# runs as root without the two capabilities that let root past a file's mode
# (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), dropped from its bounding set before it starts,
# so its read of the file really fails with EACCES. A non-root user needs no such help.
_PR_CAPBSET_DROP: Final = 24
_CAP_DAC_OVERRIDE: Final = 1
_CAP_DAC_READ_SEARCH: Final = 2


def _drop_file_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _held_to_file_modes() -> Callable[[], None] | None:
    """What to run in the child so that a file's mode binds it; skip if it cannot be."""
    if os.geteuid() != 0:
        return None
    probe = subprocess.run(
        [sys.executable, "-c", "pass"], preexec_fn=_drop_file_capabilities, capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here (no CAP_SETPCAP?)")
    return _drop_file_capabilities


class HeldSidecar(Daemon):
    """A `picoapi-sidecar run` for whom a file's mode counts, even when the tests are root."""

    def __init__(self, argv: list[str], log_path: Path, preexec: Callable[[], None] | None):
        self.argv, self.log_path = argv, log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(log_path.parent),
            preexec_fn=preexec,
        )
        self.pid = self.proc.pid


@pytest.fixture
def held_sidecar(tmp_path: Path) -> Iterator[Callable[[Path], HeldSidecar]]:
    preexec = _held_to_file_modes()
    started: list[HeldSidecar] = []

    def start(path: Path) -> HeldSidecar:
        argv = [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(path)]
        sidecar = HeldSidecar(argv, tmp_path / f"sidecar-{len(started)}.log", preexec)
        started.append(sidecar)
        sidecar.wait_for_event("sidecar_started")
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()


@pytest.mark.parametrize("fix", ["edited_then_chmod", "replaced"])
def test_an_edit_made_while_the_file_was_unreadable_is_applied_without_sighup(
    start_master: Any, held_sidecar: Callable[[Path], HeldSidecar], tmp_path: Path, fix: str
) -> None:
    """chmod 000: the sidecar cannot read the file, says so once in /status and its log,
    and keeps its configuration. The file is then fixed with new tags, either edited in
    place (same size and mtime: only the mode tells) and given its mode back, or replaced
    by a readable file: the tags reach the master, with no SIGHUP."""
    master = start_master()
    port = free_port()
    path = tmp_path / "service.yaml"
    text = service_yaml(
        "[a, b]", extra=f"master:\n  url: {master.url}\nsidecar:\n  listen: 127.0.0.1:{port}\n"
    )
    path.write_text(text)
    path.chmod(0o644)
    sidecar = held_sidecar(path)

    def status() -> dict[str, Any]:
        answer: dict[str, Any] = http_request("GET", f"http://127.0.0.1:{port}/status").json()
        return answer

    wait_until(lambda: record(master, "web-1"), message="registered")
    path.chmod(0o000)
    error = wait_until(lambda: status()["config_error"], message="the read fails")
    assert error == f"{path}: cannot read: Permission denied"
    time.sleep(0.6)  # a poll or two more: retried, not reported again
    assert [e["event"] for e in sidecar.events()].count("config_unreadable") == 1
    new = text.replace("[a, b]", "[a, c]")
    if fix == "edited_then_chmod":
        edit_keeping_the_stat(path, new)  # root writes past the mode; the sidecar cannot
        path.chmod(0o644)
    else:
        fixed = tmp_path / "fixed.yaml"
        fixed.write_text(new)
        os.replace(fixed, path)
    wait_until(
        lambda: record(master, "web-1")["tags"] == ["a", "c"],  # type: ignore[index]
        timeout=3,
        message="the edit at the master",
    )
    assert status()["config_error"] is None
    events = [e["event"] for e in sidecar.events()]
    assert "config_reloaded" in events and "config_rejected" not in events
    unreadable = next(e for e in sidecar.events() if e["event"] == "config_unreadable")
    assert unreadable["reason"] == error
