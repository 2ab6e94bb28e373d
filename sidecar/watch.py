"""Follow edits of the service's YAML file: in place, atomic rename, or a symlink swap.

Polls the stat of the resolved path (a Kubernetes ConfigMap update swaps a symlink, so the
target changes while the link does not; a chmod changes only the mode) and compares a
content hash before reloading, so a touch without a change does nothing. SIGHUP asks for a
reload at once, whatever the stat and the hash say. A file that goes missing (mid-swap, or
deleted) is reported once and the configuration in force is kept; when it comes back it is
read again even if its content is what it was, so the report clears. A file that cannot be
read (its mode, say) is reported once and read again at every poll until it can be, so an
edit made meanwhile is not lost whatever its stat.

The file is read, hashed and parsed off the event loop, in a thread: /health must keep
answering meanwhile. A large file (past CHILD_PARSE_CHARS) is parsed by a child process: the
pure-Python YAML parser takes most of a second over 1 MiB, all of it holding the GIL, and in
a thread the event loop would wait for the lock at every turn, the longer whenever the OS
preempts the parsing thread while it holds it (on a busy machine, past 100 ms).

The owner runs `run()` as its task and cancels it to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from master.shared import yamlfile
from master.shared.yamlfile import ConfigError, Document, Problem, parse_document
from sidecar.config import Config, FileUnreadable, parse_config, read_file

log = structlog.get_logger("sidecar.watch")

POLL_SECONDS: Final = 0.5  # a tag edit must reach the master within 2 s; stat is cheap
CHILD_PARSE_CHARS: Final = 64 * 1024  # a service file is a few hundred bytes
CHILD_PARSE_TIMEOUT: Final = 30.0  # at nice 10 on a busy machine, a 1 MiB file takes seconds
# The child: the text, the file's name, the environment and our import path come pickled on
# stdin; the Document, or the problems of a file that does not parse, go back on stdout. It
# starts without `site` (quick: the path comes from here) and lowers its priority before its
# imports and the parse, which so yield the CPU to the event loop.
_IMPORT_ROOT: Final = str(Path(yamlfile.__file__).resolve().parents[2])  # holds `master`
_CHILD_SCRIPT: Final = """
import os, pickle, sys
os.nice(10)
text, file, environ, path = pickle.loads(sys.stdin.buffer.read())
sys.path[:0] = path
from master.shared.yamlfile import ConfigError, parse_document
try:
    result = parse_document(text, file, environ)
except ConfigError as exc:
    result = list(exc.problems)
sys.stdout.buffer.write(pickle.dumps(result))
"""


class ChildParser:
    """`parse_document`, in a child process for a large text (its own GIL), in the calling
    thread for the usual small one. A child that cannot run or fails leaves the parse to
    the thread; `kill` ends one still running (the watcher stopped meanwhile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._killed = False

    def __call__(self, text: str, file: str, environ: Mapping[str, str]) -> Document:
        if len(text) <= CHILD_PARSE_CHARS:
            return parse_document(text, file, environ)
        message = pickle.dumps((text, file, dict(environ), [_IMPORT_ROOT, *sys.path]))
        try:
            child = subprocess.Popen(
                [sys.executable, "-S", "-c", _CHILD_SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("config_parse_child_failed", reason=str(exc), parsing="in a thread")
            return parse_document(text, file, environ)
        with self._lock:
            self._child, self._killed = child, False
        try:
            out, err = child.communicate(message, timeout=CHILD_PARSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            seconds = f"{CHILD_PARSE_TIMEOUT:g}"
            raise ConfigError([Problem(file, None, "", f"not parsed within {seconds} s")]) from None
        finally:
            with self._lock:
                self._child = None
        if self._killed:
            raise ConfigError([Problem(file, None, "", "not parsed: the watcher stopped")])
        if child.returncode != 0 or not out:
            reason = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [
                f"exit status {child.returncode}"
            ]
            log.warning("config_parse_child_failed", reason=reason[0], parsing="in a thread")
            return parse_document(text, file, environ)
        result = pickle.loads(out)  # from our own child, of plain values we made there
        if isinstance(result, list):
            raise ConfigError(result)
        assert isinstance(result, Document)
        return result

    def kill(self) -> None:
        with self._lock:
            if self._child is not None and self._child.poll() is None:
                self._killed = True
                self._child.kill()


Stamp = tuple[int, int, int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped link target has a new inode
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size, st.st_mode)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(read_file(path)).hexdigest()
    except ConfigError:
        return None


@dataclass(frozen=True, slots=True)
class _Read:
    """One look at the file's content, made in a thread."""

    digest: str | None = None  # of what was read; None: nothing was
    config: Config | None = None  # parsed, when it had to be
    error: ConfigError | None = None


def _read(path: Path, known_digest: str | None, always: bool, parser: ChildParser) -> _Read:
    """Read the file; parse it unless its content is `known_digest` (and not `always`)."""
    try:
        data = read_file(path)
    except ConfigError as exc:
        return _Read(error=exc)
    digest = hashlib.sha256(data).hexdigest()
    if digest == known_digest and not always:
        return _Read(digest)
    try:
        return _Read(digest, parse_config(data, path, parse=parser))
    except ConfigError as exc:
        return _Read(digest, error=exc)


class ConfigWatcher:
    """Calls `on_change(new_config)` for each valid edit; a bad edit is logged and ignored."""

    def __init__(self, path: Path, current: Config, on_change: Callable[[Config], None]) -> None:
        self.path = path
        self.current = current
        self.last_error: str | None = None
        self._on_change = on_change
        self._stamp = _stamp(path)
        self._digest = _digest(path)
        self._missing = False
        self._unreadable: str | None = None  # why the last read failed: read again
        self._forced = False
        self._wake = asyncio.Event()
        self._parser = ChildParser()

    def reload_now(self) -> None:
        """SIGHUP: re-read the file at once, even if neither its stat nor its content
        changed. Only sets a flag, as a signal handler should."""
        self._forced = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            await self.poll()

    async def poll(self) -> None:
        """One look at the file: reload it if it changed, was asked for, came back, or
        could not be read last time."""
        forced, self._forced = self._forced, False
        stamp = _stamp(self.path)
        if stamp is None:
            # Mid-swap or deleted: keep running on what we have, and say so once.
            self._stamp = None
            if not self._missing:
                self._missing = True
                self.last_error = f"{self.path}: file is missing"
                log.warning("config_missing", path=str(self.path))
            return
        returned, self._missing = self._missing, False
        retry = self._unreadable is not None
        if stamp == self._stamp and not (forced or retry):
            return
        self._stamp = stamp
        again = forced or returned or retry
        try:
            read = await asyncio.to_thread(_read, self.path, self._digest, again, self._parser)
        except asyncio.CancelledError:
            self._parser.kill()  # the thread then ends at once, and nothing waits on it
            raise
        if isinstance(read.error, FileUnreadable):
            self._unreadable_now(read.error)
            return
        self._unreadable = None
        self._digest = read.digest
        if read.error is not None:
            self._rejected(read.error)
        elif read.config is not None:
            self._apply(read.config)

    def _unreadable_now(self, error: ConfigError) -> None:
        reason = str(error)
        if reason != self._unreadable:
            log.warning(
                "config_unreadable",
                path=str(self.path),
                reason=reason,
                keeping="the last good configuration",
                retry="at every poll",
            )
        self._unreadable = self.last_error = reason

    def _rejected(self, error: ConfigError) -> None:
        self.last_error = str(error)
        log.error(
            "config_rejected",
            path=str(self.path),
            errors=str(error).splitlines(),
            keeping="the last good configuration",
        )

    def _apply(self, new: Config) -> None:
        self.last_error = None
        if new == self.current:
            return
        changed = _changed_sections(self.current, new)
        if new.sidecar.listen != self.current.sidecar.listen:
            log.warning("restart_needed", reason="sidecar.listen changed; restart to apply it")
        self.current = new
        log.info(
            "config_reloaded", path=str(self.path), changed=changed, tags=list(new.service.tags)
        )
        self._on_change(new)


def _changed_sections(old: Config, new: Config) -> list[str]:
    return [
        name
        for name in ("service", "check", "master", "sidecar")
        if getattr(old, name) != getattr(new, name)
    ]
