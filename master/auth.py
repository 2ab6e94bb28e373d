"""Who may do what: writes need a write token; reads a read or write token, if set."""

from __future__ import annotations

from master.errors import Unauthorized
from master.shared.tokens import TokenFile

READS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})


class Auth:
    """Who may do what: writes need a write token; reads a read or write token, if set."""

    def __init__(self, write: TokenFile | None, read: TokenFile | None) -> None:
        self.write = write
        self.read = read

    def guards(self, method: str) -> bool:
        """Does a request of `method` need a token at all? (Open by default: no cost.)"""
        return (self.read if method in READS else self.write) is not None

    def check(self, method: str, authorization: str | None) -> None:
        if not self.allows(method, authorization):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    def allows(self, method: str, authorization: str | None) -> bool:
        is_write = method not in READS
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
