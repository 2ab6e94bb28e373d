"""Follow edits of the service's YAML file: in place, atomic rename, or a symlink swap.

Polls the stat of the resolved path (a Kubernetes ConfigMap update swaps a symlink, so the
target changes while the link does not) and compares a content hash before reloading, so
a touch without a change does nothing. SIGHUP asks for a reload at once, whatever the stat
and the hash say. A file that goes missing (mid-swap, or deleted) is reported once and the
configuration in force is kept; when it comes back it is read again even if its content is
what it was, so the report clears.

The owner runs `run()` as its task and cancels it to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from master.shared.yamlfile import ConfigError
from sidecar.config import Config, load_config

log = structlog.get_logger("sidecar.watch")

POLL_SECONDS: Final = 0.5  # a tag edit must reach the master within 2 s; stat is cheap

Stamp = tuple[int, int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped link target has a new inode
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


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
        self._forced = False
        self._wake = asyncio.Event()

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
            self.poll()

    def poll(self) -> None:
        """One look at the file: reload it if it changed, was asked for, or came back."""
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
        if stamp == self._stamp and not forced:
            return
        self._stamp = stamp
        digest = _digest(self.path)
        if digest == self._digest and not (forced or returned):
            return
        self._digest = digest
        self._reload()

    def _reload(self) -> None:
        # load_config reads a token file too: a few small synchronous reads, fine on the loop.
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error(
                "config_rejected",
                path=str(self.path),
                errors=str(exc).splitlines(),
                keeping="the last good configuration",
            )
            return
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
