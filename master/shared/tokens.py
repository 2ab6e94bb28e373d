"""Token files: one token a line, `#` comments; re-read when the file changes (rotation).

One format for every token file: the master's write and read tokens and the sidecar's
`master.token_file`.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger("master.shared.tokens")

RECHECK_SECONDS = 1.0


class TokenFileError(ValueError):
    """The token file is missing, unreadable or holds no token (`empty`)."""

    def __init__(self, message: str, *, strerror: str | None = None, empty: bool = False) -> None:
        super().__init__(message)
        self.strerror = strerror  # why the file could not be read, if it could not
        self.empty = empty


@dataclass(frozen=True, slots=True)
class Scope:
    """What a token may do: read only, or write too, to every service or to those whose
    name starts with one of `prefixes` (as Consul scopes `service:write`)."""

    write: bool = True
    prefixes: tuple[str, ...] = ()  # empty: every service

    def covers(self, name: str) -> bool:
        return not self.prefixes or name.startswith(self.prefixes)

    def describe(self) -> str:
        names = " or ".join(f"{p}*" for p in self.prefixes) if self.prefixes else "every"
        return f"{'write' if self.write else 'read'} {names} service"


EVERYTHING: Final = Scope()


def read_token_entries(path: str | Path) -> tuple[tuple[str, Scope], ...]:
    """A token file: one token a line, optionally followed by its scope, `read` or
    `write` and name prefixes ending in `*`:

        s3cret-for-ops                    # write, every service
        deploy-web   write web-* api-*     # write only services named web-... or api-...
        dashboards   read                  # read only

    Blank lines and `#` comments (whole-line or after the words) are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        message = f"{path}: cannot read token file: {exc.strerror}"
        raise TokenFileError(message, strerror=exc.strerror) from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: token file is not UTF-8 text") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split() if not line.strip().startswith("#") else []
        if not words:
            continue
        token, *scope = words
        entries.append((token, _scope(scope, f"{path}:{number}")))
    if not entries:
        raise TokenFileError(f"{path}: token file holds no token", empty=True)
    return tuple(entries)


def _scope(words: list[str], where: str) -> Scope:
    write, prefixes = True, []
    for word in words:
        if word in ("read", "write"):
            write = word == "write"
        elif word.endswith("*") and len(word) > 1 and "*" not in word[:-1]:
            prefixes.append(word[:-1])
        else:
            raise TokenFileError(
                f"{where}: {word!r} is not read, write or a name prefix like web-* "
                "(the token itself is never shown)"
            )
    if prefixes and not write:
        raise TokenFileError(f"{where}: name prefixes scope writes; a read token reads all")
    return Scope(write, tuple(prefixes))


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """The tokens of a token file, without their scopes (the sidecar sends the first)."""
    return tuple(token for token, _ in read_token_entries(path))


class TokenFile:
    """The tokens of one file with their scopes, reloaded when its mtime or size changes.

    A file that turns bad while running keeps the last good tokens (logged, without the
    tokens), so a half-written rotation cannot lock every client out.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._entries = self._load()
        self._stamp = self._stat()
        self._checked_at = time.monotonic()

    def _load(self) -> tuple[tuple[bytes, Scope], ...]:
        entries = read_token_entries(self.path)
        if self.read_only:
            for _, scope in entries:
                if scope.prefixes:
                    raise TokenFileError(
                        f"{self.path}: a read token file gives read tokens; name prefixes "
                        "and write belong in the write token file"
                    )
            entries = tuple((token, Scope(write=False)) for token, _ in entries)
        return tuple((token.encode(), scope) for token, scope in entries)

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
            self._entries = self._load()
        except TokenFileError as exc:
            log.warning("token_file_rejected", path=str(self.path), reason=str(exc))
            return
        log.info("token_file_reloaded", path=str(self.path), tokens=len(self._entries))

    def scope(self, presented: str) -> Scope | None:
        """The scope of the token presented, or None. Compared against every token in
        constant time per token, whatever matches."""
        self._refresh()
        candidate = presented.encode()
        found: Scope | None = None
        for token, scope in self._entries:
            if hmac.compare_digest(candidate, token) and found is None:
                found = scope
        return found

    def accepts(self, presented: str) -> bool:
        return self.scope(presented) is not None
