"""Who may do what: writes need a write token, reads a read or write token if set; a
token's scope may limit it to reading, or to services whose name has a given prefix.

A token comes as `Authorization: Bearer <token>`, or as Consul clients send it:
`X-Consul-Token: <token>` or `?token=<token>`.
"""

from __future__ import annotations

from collections.abc import Mapping

from master.errors import Forbidden, Unauthorized
from master.shared.tokens import EVERYTHING, Scope, TokenFile

READS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})
ASK: str = "a valid token is required: 'Authorization: Bearer <token>' (or X-Consul-Token)"


class Auth:
    def __init__(self, write: TokenFile | None, read: TokenFile | None) -> None:
        self.write = write
        self.read = read

    def guards(self, method: str) -> bool:
        """Does a request of `method` need a token at all? (Open by default: no cost.)"""
        return (self.read if method in READS else self.write) is not None

    def scope(self, method: str, headers: Mapping[str, str], query: Mapping[str, str]) -> Scope:
        """What the caller may do; Unauthorized without a token good for `method`."""
        is_write = method not in READS
        if not self.guards(method):
            return EVERYTHING if is_write or self.write is None else self._any(headers, query)
        token = presented(headers, query)
        scope = None
        if token is not None:
            scope = self.write.scope(token) if self.write is not None else None
            if scope is None and self.read is not None and not is_write:
                scope = self.read.scope(token)  # a read token is no token for a write
        if scope is None:
            raise Unauthorized(ASK)
        if is_write and not scope.write:
            raise Forbidden("this token may only read")
        return scope

    def _any(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Scope:
        """Reads are open, writes guarded: a write token read here keeps its scope."""
        token = presented(headers, query)
        found = self.write.scope(token) if self.write is not None and token else None
        return found or EVERYTHING

    def allows(self, method: str, authorization: str | None) -> bool:
        try:
            self.scope(method, {"Authorization": authorization or ""}, {})
        except (Unauthorized, Forbidden):
            return False
        return True


def presented(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token as Bearer, X-Consul-Token or ?token= (Consul's clients use the last two)."""
    header = headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("X-Consul-Token") or query.get("token") or None


def may_write(scope: Scope, *names: str | None) -> None:
    """Forbidden unless the token's scope covers every service name given."""
    for name in names:
        if name is not None and not scope.covers(name):
            raise Forbidden(f"this token may {scope.describe()}s, not {name!r}")
