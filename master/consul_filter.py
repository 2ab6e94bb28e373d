"""Consul's `filter=` expression language (hashicorp/go-bexpr), for the fields we serve.

    Service.Tags contains "primary" and Service.Meta.version != "1.4.2"
    ServicePort == 8080 or not (ServiceName matches "^web-")
    "db" in ServiceTags
    Checks.Status == passing
    Service.Meta.team is not empty

Operators: `==`, `!=`, `in`, `not in`, `contains`, `not contains`, `matches`,
`not matches`, `is empty`, `is not empty`; `and`, `or`, `not`, parentheses. Values are
"double quoted", `backquoted`, or bare words and numbers. A selector walks the data the
endpoint answers with (a key of a map, such as `Service.Meta.version`, included); through a
list of objects (`Checks.Status`) a match holds if it holds for any element. What we cannot
evaluate (an unknown selector, a syntax error) is a FilterError: answered 400, never
ignored, so a filtered client never gets unfiltered data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import re2

_TOKEN_RE: Final = re.compile(
    r"""\s*(?:
        (?P<open>\() | (?P<close>\)) |
        (?P<op>==|!=) |
        (?P<dq>"(?:[^"\\]|\\.)*") | (?P<bq>`[^`]*`) |
        (?P<word>[A-Za-z0-9_.\-:/@*+]+)
    )""",
    re.X,
)
MAX_LENGTH: Final = 4096
MAX_DEPTH: Final = 32


class FilterError(ValueError):
    """The filter cannot be evaluated; the message says where and why."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # open, close, op, value, word
    text: str
    at: int


def _tokens(text: str) -> list[_Token]:
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter is longer than {MAX_LENGTH} characters")
    found, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise FilterError(f"filter: cannot read {text[pos : pos + 20].strip()!r} at {pos}")
        kind = match.lastgroup or "word"
        raw = match.group(kind)
        if kind == "dq":
            found.append(_Token("value", _unquote(raw[1:-1], pos), pos))
        elif kind == "bq":
            found.append(_Token("value", raw[1:-1], pos))
        else:
            found.append(_Token(kind, raw, pos))
        pos = match.end()
    return found


_ESCAPES: Final = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}
_ESCAPE_RE: Final = re.compile(
    r"\\(?:x[0-9A-Fa-f]{2}|[0-7]{3}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.S
)


def _unquote(body: str, at: int) -> str:
    """A "double quoted" string's text, its escapes read as Go's strconv.Unquote reads
    them (go-bexpr's): `\\xHH` and `\\ooo` are bytes, `\\uHHHH` and `\\UHHHHHHHH` runes."""
    out, last = bytearray(), 0
    for escape in _ESCAPE_RE.finditer(body):
        out += body[last : escape.start()].encode("utf-8", "surrogatepass")
        last = escape.end()
        code = escape.group()[1:]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif code[0] == "x" and len(code) == 3:
            out.append(int(code[1:], 16))
        elif code[0] in "01234567" and len(code) == 3 and int(code, 8) < 256:
            out.append(int(code, 8))
        elif code[0] in "uU" and len(code) > 1:
            rune = int(code[1:], 16)
            if rune > 0x10FFFF or 0xD800 <= rune < 0xE000:
                raise FilterError(f"filter: \\{code} at {at} is not a Unicode character")
            out += chr(rune).encode("utf-8")
        else:
            raise FilterError(f"filter: unknown escape \\{code[:1]!s} in the string at {at}")
    out += body[last:].encode("utf-8", "surrogatepass")
    # Bytes that are not UTF-8 (Go keeps them) become lone surrogates: equal to no text.
    return out.decode("utf-8", "surrogateescape")


Predicate = Callable[[Mapping[str, Any]], bool]


class _Parser:
    def __init__(self, text: str, fields: Mapping[str, Any]) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.fields = fields  # the selectors this endpoint knows: a nested map of types
        self.depth = 0

    def parse(self) -> Predicate:
        if not self.tokens:
            raise FilterError("filter is empty")
        predicate = self._or()
        if self.pos != len(self.tokens):
            token = self.tokens[self.pos]
            raise FilterError(f"filter: unexpected {token.text!r} at {token.at}")
        return predicate

    def _peek(self, *words: str) -> bool:
        if self.pos >= len(self.tokens):
            return False
        token = self.tokens[self.pos]
        return token.kind == "word" and token.text in words

    def _take(self) -> _Token:
        if self.pos >= len(self.tokens):
            raise FilterError("filter ends too soon")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek("or"):
            self.pos += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda d: any(p(d) for p in parts))

    def _and(self) -> Predicate:
        parts = [self._not()]
        while self._peek("and"):
            self.pos += 1
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else (lambda d: all(p(d) for p in parts))

    def _not(self) -> Predicate:
        negations = 0  # counted, not recursed: `not not ... not` must not exhaust the stack
        while self._peek("not"):
            self.pos += 1
            negations += 1
        inner = self._primary()
        return (lambda d: not inner(d)) if negations % 2 else inner

    def _primary(self) -> Predicate:
        token = self._take()
        if token.kind == "open":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FilterError(f"filter nests deeper than {MAX_DEPTH}")
            inner = self._or()
            if self._take().kind != "close":
                raise FilterError(f"filter: a '(' at {token.at} is not closed")
            self.depth -= 1
            return inner
        # `"value" in Selector` / `"value" not in Selector`
        if self._peek("in") or (self._peek("not") and self._next_is("in")):
            negate = self._peek("not")
            self.pos += 2 if negate else 1
            selector = self._selector(self._take())
            value = token.text
            test = self._membership(selector, value)
            return (lambda d: not test(d)) if negate else test
        selector = self._selector(token)
        return self._comparison(selector)

    def _next_is(self, word: str) -> bool:
        nxt = self.pos + 1
        return nxt < len(self.tokens) and self.tokens[nxt].text == word

    def _selector(self, token: _Token) -> tuple[str, ...]:
        if token.kind != "word" or token.text in ("and", "or", "not", "in", "is"):
            raise FilterError(f"filter: expected a selector at {token.at}, got {token.text!r}")
        path = tuple(token.text.split("."))
        node: Any = self.fields
        for i, part in enumerate(path):
            if node == "map":  # Service.Meta.<any key>
                if i != len(path) - 1:
                    raise FilterError(f"filter: selector {token.text!r} goes past a map key")
                return path
            if not isinstance(node, Mapping) or part not in node:
                known = ", ".join(sorted(self._leaves(self.fields)))
                raise FilterError(
                    f"filter: selector {token.text!r} is not valid here; known: {known}"
                )
            node = node[part]
        return path

    def _leaves(self, node: Mapping[str, Any], prefix: str = "") -> list[str]:
        names = []
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                names += self._leaves(value, f"{name}.")
            else:
                names.append(name)
        return names

    def _value(self) -> str:
        token = self._take()
        if token.kind not in ("value", "word"):
            raise FilterError(f"filter: expected a value at {token.at}, got {token.text!r}")
        return token.text

    def _comparison(self, selector: tuple[str, ...]) -> Predicate:
        if self._peek("is"):
            self.pos += 1
            negate = self._peek("not")
            if negate:
                self.pos += 1
            if not self._peek("empty"):
                raise FilterError("filter: 'is' goes with 'empty' or 'not empty'")
            self.pos += 1
            return lambda d: _empty(_values(d, selector)) != negate
        negate = False
        if self._peek("not"):
            negate = True
            self.pos += 1
        token = self._take()
        if token.kind == "op" and not negate:
            value = self._value()
            if token.text == "==":
                return lambda d: any(_equal(v, value) for v in _scalars(d, selector))
            return lambda d: not any(_equal(v, value) for v in _scalars(d, selector))
        if token.text == "contains":
            test = self._membership(selector, self._value())
        elif token.text == "matches":
            compiled = _regex(self._value())
            test = lambda d: any(  # noqa: E731
                isinstance(v, str) and compiled.search(v) is not None for v in _scalars(d, selector)
            )
        else:
            raise FilterError(
                f"filter: expected ==, !=, contains, matches or is empty at {token.at}, "
                f"got {token.text!r}"
            )
        return (lambda d: not test(d)) if negate else test

    @staticmethod
    def _membership(selector: tuple[str, ...], value: str) -> Predicate:
        def test(data: Mapping[str, Any]) -> bool:
            for found in _values(data, selector):
                if isinstance(found, Mapping):
                    if value in found:
                        return True
                elif isinstance(found, list | tuple):
                    if any(_equal(item, value) for item in found):
                        return True
                elif isinstance(found, str) and value in found:
                    return True
            return False

        return test


# --- `matches`: regular expressions in linear time ----------------------------------------
#
# Go's regexp, which Consul uses, is RE2: linear in the text whatever the pattern, and
# without back references or look-arounds. Python's `re` backtracks: `(a|aa)+$` on a 4 KiB
# check output would hold the master for ages, and any reader may send a filter. So
# patterns are compiled by RE2 itself (google-re2), which also refuses what Go refuses.

_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's 400, not our stderr
_RE2_OPTIONS.max_mem = 1 << 20  # per compiled pattern: a huge one is refused, not built


def _regex(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else "refused"
        reason = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise FilterError(f"filter: {pattern!r} is not a regular expression: {reason}") from None


def _values(data: Any, path: tuple[str, ...]) -> list[Any]:
    """What `path` selects in `data`; through lists, from every element."""
    current = [data]
    for part in path:
        following = []
        for item in current:
            if isinstance(item, list | tuple):
                following += [x.get(part) for x in item if isinstance(x, Mapping) and part in x]
            elif isinstance(item, Mapping) and part in item:
                following.append(item[part])
        current = following
    return current


def _scalars(data: Any, path: tuple[str, ...]) -> list[Any]:
    found = []
    for value in _values(data, path):
        found += list(value) if isinstance(value, list | tuple) else [value]
    return found


def _empty(values: list[Any]) -> bool:
    return all(
        v is None or v == "" or (isinstance(v, list | tuple | Mapping) and not v) for v in values
    )


def _equal(actual: Any, wanted: str) -> bool:
    if isinstance(actual, bool):
        return str(actual).lower() == wanted.lower()
    if isinstance(actual, int | float):
        try:
            return float(actual) == float(wanted)
        except ValueError:
            return False
    return actual == wanted


def compile_filter(text: str, fields: Mapping[str, Any]) -> Predicate:
    """A predicate over the endpoint's answer items; FilterError if it cannot be evaluated."""
    return _Parser(text, fields).parse()


# The selectors of each view, as the data it answers with is shaped ("map": any key).
_NODE: Final = {"Node": str, "Address": str, "Datacenter": str, "ID": str, "Meta": "map"}
CATALOG_SERVICE_FIELDS: Final = {
    "ID": str,
    "Node": str,
    "Address": str,
    "Datacenter": str,
    "NodeMeta": "map",
    "TaggedAddresses": "map",
    "ServiceID": str,
    "ServiceName": str,
    "ServiceAddress": str,
    "ServicePort": int,
    "ServiceTags": list,
    "ServiceMeta": "map",
    "ServiceEnableTagOverride": bool,
}
HEALTH_SERVICE_FIELDS: Final = {
    "Node": _NODE,
    "Service": {
        "ID": str,
        "Service": str,
        "Tags": list,
        "Address": str,
        "Port": int,
        "Meta": "map",
        "EnableTagOverride": bool,
    },
    "Checks": {
        "Node": str,
        "CheckID": str,
        "Name": str,
        "Status": str,
        "Output": str,
        "ServiceID": str,
        "ServiceName": str,
        "ServiceTags": list,
        "Type": str,
    },
}
