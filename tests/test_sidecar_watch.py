"""The file watcher, in process, on real files: edits, a ConfigMap symlink swap, a file
that goes missing and comes back, SIGHUP, a bad edit."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from master.shared.daemon import cancel_and_wait
from sidecar import watch
from sidecar.config import Config, load_config
from sidecar.watch import ConfigWatcher

DEADLINE: Final = 3.0
POLL: Final = 0.02


def service_yaml(tags: str = "[a]", port: str = "8080") -> str:
    return (
        "service:\n  name: web\n  id: web-1\n  address: 127.0.0.1\n"
        f"  port: {port}\n  tags: {tags}\n"
    )


def write(path: Path, text: str) -> None:
    """Files are edited by plain synchronous calls, as an editor or the kubelet would."""
    path.write_text(text)


def read(path: Path) -> str:
    return path.read_text()


def remove(path: Path) -> None:
    path.unlink()


class Watched:
    """A watcher on `path` and the configurations it handed on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.changes: list[Config] = []
        self.watcher = ConfigWatcher(path, load_config(path), self.changes.append)

    @property
    def tags(self) -> tuple[str, ...]:
        return self.watcher.current.service.tags


@asynccontextmanager
async def watching(path: Path) -> AsyncIterator[Watched]:
    watched = Watched(path)
    task = asyncio.create_task(watched.watcher.run())
    try:
        yield watched
    finally:
        await cancel_and_wait(task)


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "POLL_SECONDS", POLL)


async def eventually(predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout}s: {predicate}")


async def quiet(seconds: float = 10 * POLL) -> None:
    """Several polls' time, for what must *not* happen."""
    await asyncio.sleep(seconds)


def edit_keeping_the_stat(path: Path, text: str) -> None:
    """New content of the same size, inode and mtime: the stat alone sees no change."""
    before = os.stat(path)
    assert len(text.encode()) == before.st_size
    with open(path, "r+") as handle:
        handle.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


@pytest.fixture
def service_file(tmp_path: Path) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(service_yaml())
    return path


async def test_an_edit_reaches_the_callback(service_file: Path) -> None:
    async with watching(service_file) as watched:
        write(service_file, service_yaml("[a, b]"))
        await eventually(lambda: watched.changes)
        await quiet()
    assert len(watched.changes) == 1 and watched.tags == ("a", "b")


async def test_a_configmap_symlink_swap_reaches_the_callback_once(tmp_path: Path) -> None:
    """The kubelet's update: a new timestamped dir, `..data` swapped to it by rename, the
    old dir removed. The file's own link never changes; what it resolves to does."""
    root = tmp_path / "configmap"
    (root / "..2026_01_01_00_00_00.1").mkdir(parents=True)
    (root / "..2026_01_01_00_00_00.1" / "service.yaml").write_text(service_yaml())
    (root / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (root / "service.yaml").symlink_to("..data/service.yaml")
    async with watching(root / "service.yaml") as watched:
        new = root / "..2026_01_01_00_01_00.2"
        new.mkdir()
        (new / "service.yaml").write_text(service_yaml("[a, swapped]"))
        (root / "..data_tmp").symlink_to(new.name)
        os.replace(root / "..data_tmp", root / "..data")
        shutil.rmtree(root / "..2026_01_01_00_00_00.1")
        await eventually(lambda: watched.changes)
        await quiet()
    assert len(watched.changes) == 1
    assert watched.tags == ("a", "swapped") and watched.watcher.last_error is None


async def test_a_missing_file_that_returns_unchanged_clears_its_error(service_file: Path) -> None:
    text = read(service_file)
    async with watching(service_file) as watched:
        remove(service_file)
        await eventually(lambda: watched.watcher.last_error)
        assert watched.watcher.last_error == f"{service_file}: file is missing"
        await quiet()
        write(service_file, text)  # back, with the content it had
        await eventually(lambda: watched.watcher.last_error is None)
        await quiet()
    assert watched.changes == [], "the same content is no change"
    assert watched.tags == ("a",)


async def test_a_missing_file_that_returns_changed_is_taken(service_file: Path) -> None:
    async with watching(service_file) as watched:
        remove(service_file)
        await eventually(lambda: watched.watcher.last_error)
        write(service_file, service_yaml("[back]"))
        await eventually(lambda: watched.changes)
    assert watched.tags == ("back",) and watched.watcher.last_error is None


async def test_sighup_reloads_what_the_stat_does_not_show(
    service_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "POLL_SECONDS", 60.0)  # only the wake-up can do it
    async with watching(service_file) as watched:
        edit_keeping_the_stat(service_file, service_yaml("[b]"))
        await quiet()
        assert watched.changes == []
        watched.watcher.reload_now()  # what the SIGHUP handler calls
        await eventually(lambda: watched.changes, timeout=1.0)
    assert watched.tags == ("b",)


async def test_a_real_sighup_reloads(service_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "POLL_SECONDS", 60.0)
    loop = asyncio.get_running_loop()
    async with watching(service_file) as watched:
        loop.add_signal_handler(signal.SIGHUP, watched.watcher.reload_now)
        try:
            edit_keeping_the_stat(service_file, service_yaml("[h]"))
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: watched.changes, timeout=1.0)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
    assert watched.tags == ("h",)


async def test_a_bad_edit_keeps_the_last_good_config(service_file: Path) -> None:
    async with watching(service_file) as watched:
        write(service_file, service_yaml(port="eighty"))
        error = await eventually(lambda: watched.watcher.last_error)
        await quiet()
        assert watched.changes == [] and watched.watcher.current.service.port == 8080
        assert f"{service_file}:5: service.port" in error
        write(service_file, service_yaml("[fixed]"))
        await eventually(lambda: watched.changes)
    assert watched.tags == ("fixed",) and watched.watcher.last_error is None


async def test_a_touch_without_a_change_does_nothing(
    service_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real = watch.parse_config

    def counting(data: bytes, path: Path, **kwargs: Any) -> Config:
        reads.append(path)
        return real(data, path, **kwargs)

    monkeypatch.setattr(watch, "parse_config", counting)
    async with watching(service_file) as watched:
        os.utime(service_file)
        write(service_file, read(service_file))
        await quiet()
        write(service_file, service_yaml("[c]"))  # and a real change is still read
        await eventually(lambda: watched.changes)
    assert len(reads) == 1
