"""Token files: one token a line, `#` comments; re-read when the file changes (rotation).

One format for every token file: the master's write and read tokens and the sidecar's
`master.token_file`.
"""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger("master.shared.tokens")

RECHECK_SECONDS = 1.0


class TokenFileError(ValueError):
    """The token file is missing, unreadable or holds no token (`empty`)."""

    def __init__(self, message: str, *, strerror: str | None = None, empty: bool = False) -> None:
        super().__init__(message)
        self.strerror = strerror  # why the file could not be read, if it could not
        self.empty = empty


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """Tokens in a file: one a line; blank lines and `#` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        message = f"{path}: cannot read token file: {exc.strerror}"
        raise TokenFileError(message, strerror=exc.strerror) from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: token file is not UTF-8 text") from None
    lines = (line.strip() for line in text.splitlines())
    tokens = tuple(line for line in lines if line and not line.startswith("#"))
    if not tokens:
        raise TokenFileError(f"{path}: token file holds no token", empty=True)
    return tokens


class TokenFile:
    """The tokens of one file, reloaded when its mtime or size changes.

    A file that turns bad while running keeps the last good tokens (logged), so a
    half-written rotation cannot lock every client out.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tokens = tuple(t.encode() for t in read_tokens(self.path))
        self._stamp = self._stat()
        self._checked_at = time.monotonic()

    def _stat(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < RECHECK_SECONDS:
            return
        self._checked_at = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._tokens = tuple(t.encode() for t in read_tokens(self.path))
        except TokenFileError as exc:
            log.warning("token_file_rejected", path=str(self.path), reason=str(exc))
            return
        log.info("token_file_reloaded", path=str(self.path), tokens=len(self._tokens))

    def accepts(self, presented: str) -> bool:
        """Compare against every token in constant time (per token), whatever matches."""
        self._refresh()
        candidate = presented.encode()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched
