"""Bearer tokens from files, one per line, re-read when the file changes (token rotation)."""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger("master.auth")

RECHECK_SECONDS = 1.0


class TokenFileError(ValueError):
    """The token file is missing, unreadable or holds no token."""


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """Tokens in a file: one a line; blank lines and `#` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read token file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: token file is not UTF-8 text") from None
    tokens = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not tokens:
        raise TokenFileError(f"{path}: token file holds no token")
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


class Auth:
    """Who may do what: writes need a write token; reads a read or write token, if set."""

    def __init__(self, write: TokenFile | None, read: TokenFile | None) -> None:
        self.write = write
        self.read = read

    def allows(self, method: str, authorization: str | None) -> bool:
        is_write = method not in ("GET", "HEAD", "OPTIONS")
        if is_write and self.write is None:
            return True
        if not is_write and self.read is None:
            return True
        token = _bearer(authorization)
        if token is None:
            return False
        if self.write is not None and self.write.accepts(token):
            return True
        return not is_write and self.read is not None and self.read.accepts(token)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
