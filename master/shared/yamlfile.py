"""YAML configuration files that remember where every value came from.

Both the sidecar's service file and the master's `--config` file go through here. The file
is composed (not loaded) so that every node keeps its line; plain values are then built
while recording, for each dotted path (`service.tags[2]`), the line it sits on. Validation
collects problems instead of stopping at the first, and every problem reads
`file:line: dotted.path: what is wrong`, so one run of `check` shows everything to fix.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from master.model import ADDRESS_MAX, FieldError, check_text

T = TypeVar("T")

# Aliases can make a small file expand into a huge one ("billion laughs"); no honest
# configuration file comes near this many values.
MAX_VALUES: Final = 100_000

_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_REF_RE: Final = re.compile(r"\$\$|\$\{(?P<body>[^{}]*)\}|\$\{")
_REF_BODY_RE: Final = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.S)
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_TYPE_NAMES: Final = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration, where the user can find it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        head = ": ".join(part for part in (where, self.field) if part)
        return f"{head}: {self.message}" if head else self.message


class ConfigError(Exception):
    """Every problem found in one configuration; str() is one line per problem."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def type_name(value: object) -> str:
    """How a YAML user would name a value's type: `a list`, `a mapping`, `null`."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def did_you_mean(key: str, known: Collection[str]) -> str:
    """The tail of an unknown-key message: a close match, else the keys there are."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of: " + ", ".join(known)


# --- value checks shared by both configuration files -------------------------------------


def check_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(field, f"must be true or false, got {type_name(value)}")
    return value


def check_host_port(value: object, field: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) -> (host without brackets, port)."""
    if isinstance(value, int) and not isinstance(value, bool):  # `listen: 9501`
        raise FieldError(field, f"must be HOST:PORT, like 0.0.0.0:{value}, got only a port")
    text = check_text(value, field, ADDRESS_MAX + 8)
    if "://" in text or "/" in text:
        raise FieldError(field, f"must be HOST:PORT, not a URL, got {text!r}")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise FieldError(field, f"an IPv6 address needs brackets, like [::1]:9501, got {text!r}")
    if not sep or not host or not _PORT_RE.fullmatch(port_text) or any(c.isspace() for c in host):
        raise FieldError(field, f"must be HOST:PORT, like 10.0.0.5:8080, got {text!r}")
    port, low = int(port_text), 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise FieldError(field, f"port must be {low}..65535, got {port}")
    return host, port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the document ----------------------------------------------------------------------


class Document:
    """A parsed file: plain values by dotted path, the line of each, and the problems so far.

    Checks record problems here and go on; `raise_for_problems` ends the run with all of
    them. A value already reported as broken (say an unset `${VAR}`) is not reported again
    by a later check of its type.
    """

    def __init__(
        self,
        file: str,
        values: dict[str, Any],
        lines: dict[str, int],
        problems: list[Problem],
        broken: set[str],
        sources: dict[str, str],
    ) -> None:
        self.file = file
        self._values = values
        self._lines = lines
        self._problems = problems
        self._broken = broken
        self._sources = sources

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(self._problems)

    def has(self, path: str) -> bool:
        """The key is written in the file (even as null)."""
        return path in self._values

    def get(self, path: str) -> Any:
        """The value at `path`; None when absent or null (null means "the default")."""
        return self._values.get(path)

    def line_of(self, path: str) -> int | None:
        """The line of `path`, or of its nearest written ancestor (`meta key` -> `meta`)."""
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[: max(path.rfind("."), path.rfind("["), path.rfind(" "), 0)]
        return self._lines.get("")

    def problem(self, path: str, message: str, *, line: int | None = None) -> None:
        self._problems.append(
            Problem(self.file, self.line_of(path) if line is None else line, path, message)
        )
        if path:
            self._broken.add(path)

    def add(self, problem: Problem) -> None:
        """Record a problem that is not at a place in the file (an environment variable)."""
        self._problems.append(problem)

    def field_error(self, exc: FieldError) -> None:
        """Record a master.model FieldError at the line of the field it names."""
        message = exc.message
        source = self._sources.get(exc.field)
        if source is not None and message.startswith("must be a string"):
            message += f' (quote it: "{source}")'
        self.problem(exc.field, message)

    def is_broken(self, path: str) -> bool:
        """`path` or one of its ancestors was already reported."""
        while True:
            if path in self._broken:
                return True
            if not path:
                return False
            path = path[: max(path.rfind("."), path.rfind("["), 0)]

    def _broken_within(self, path: str) -> bool:
        """A part of the value at `path` was reported (say a recursive alias in a list)."""
        return any(b.startswith((f"{path}.", f"{path}[")) for b in self._broken)

    def check(
        self, path: str, validate: Callable[..., T], *args: Any, required: bool = False
    ) -> T | None:
        """Validate the value at `path` with a master.model check (`check_int(value, field,
        ...)` shape). None when absent, null, already broken, or bad (then recorded)."""
        if self.is_broken(path) or self._broken_within(path):
            return None
        value = self.get(path)
        if value is None:
            if required:
                self.problem(path, "needs a value" if self.has(path) else "is required")
            return None
        try:
            return validate(value, path, *args)
        except FieldError as exc:
            self.field_error(exc)
            return None

    def section(self, path: str, known: Collection[str], *, required: bool = False) -> bool:
        """Is `path` a usable mapping? Reports a wrong type, absence if required, and every
        unknown key (with a "did you mean")."""
        if self.is_broken(path):
            return False
        value = self.get(path)
        if value is None:
            if required:
                self.problem(path, "is required")
            return False
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping (key: value), got {type_name(value)}")
            return False
        for key in value:
            if key not in known:
                child = f"{path}.{key}" if path else key
                self.problem(child, f"unknown key; {did_you_mean(key, known)}")
        return True

    def raise_for_problems(self) -> None:
        if self._problems:
            ordered = sorted(
                self._problems, key=lambda p: p.line if p.line is not None else float("inf")
            )
            raise ConfigError(ordered)


def load_document(path: str | Path, environ: Mapping[str, str]) -> Document:
    """Read and parse a file. A file that cannot be read or parsed at all raises ConfigError
    at once; everything else is collected in the Document."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([Problem(file, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(file, None, "", "is a directory, not a file")]) from None
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        message = f"is not UTF-8 text (byte {exc.start})"
        raise ConfigError([Problem(file, None, "", message)]) from None
    return parse_document(text, file, environ)


def parse_document(text: str, file: str, environ: Mapping[str, str]) -> Document:
    """Parse YAML text whose top level must be a mapping, expanding `${VAR}` from `environ`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_syntax_problems(exc, text, file)) from None
    except yaml.YAMLError as exc:  # unmarked errors, e.g. a control character in the text
        raise ConfigError([Problem(file, None, "", f"YAML error: {exc}")]) from None
    if root is None:
        raise ConfigError(
            [Problem(file, None, "", "the file is empty (or all comments); expected settings")]
        )
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        message = f"the top level must be a mapping (key: value), got {kind}"
        raise ConfigError([Problem(file, _line(root), "", message)])
    builder = _Builder(file, environ)
    try:
        builder.build(root, "", _line(root))
    except _TooLarge:
        message = f"holds more than {MAX_VALUES} values (through aliases?)"
        raise ConfigError([Problem(file, None, "", message)]) from None
    return Document(
        file, builder.values, builder.lines, builder.problems, builder.broken, builder.sources
    )


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _syntax_problems(exc: yaml.MarkedYAMLError, text: str, file: str) -> list[Problem]:
    """A parse failure as one friendly line per problem (tabs get their own words)."""
    mark = exc.problem_mark or exc.context_mark
    if "'\\t'" in (exc.problem or ""):
        tabbed = [
            n
            for n, line in enumerate(text.splitlines(), 1)
            if "\t" in line[: len(line) - len(line.lstrip())]
        ]
        lines = tabbed or ([mark.line + 1] if mark else [])
        return [
            Problem(file, n, "", "a tab is used for indentation or spacing; YAML needs spaces")
            for n in lines
        ]
    message = f"YAML syntax error: {exc.problem}"
    if mark is not None:
        message += f" (column {mark.column + 1}"
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            message += f", {exc.context} started on line {exc.context_mark.line + 1}"
        message += ")"
        if "${" in "".join(text.splitlines()[mark.line : mark.line + 1]) and "flow" in str(
            exc.context
        ):
            # `{port: ${PORT}}`: inside [ ] or { } a plain value cannot hold braces.
            message += "; inside [ ] or { }, quote values that use ${...}"
    return [Problem(file, mark.line + 1 if mark else None, "", message)]


class _TooLarge(Exception):
    pass


class _Builder:
    """Walks the composed node tree into plain values, paths, lines and problems."""

    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.environ = environ
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.broken: set[str] = set()
        # The source text of scalars YAML typed as something else than a string, so a
        # "must be a string" error can show how to quote it.
        self.sources: dict[str, str] = {}
        self._constructor = SafeConstructor()
        self._resolver = Resolver()
        self._open: set[int] = set()
        self._count = 0

    def _problem(self, line: int, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, path, message))
        self.broken.add(path)

    def build(self, node: Node, path: str, line: int) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            raise _TooLarge
        self.lines[path] = line
        value: Any = None
        if isinstance(node, ScalarNode):
            value = self._scalar(node, path, line)
        elif id(node) in self._open:
            self._problem(line, path, "an alias refers to its own anchor (a recursive value)")
        else:
            self._open.add(id(node))
            if isinstance(node, MappingNode):
                value = self._mapping(node, path)
            else:
                value = [
                    self.build(item, f"{path}[{i}]", _line(item))
                    for i, item in enumerate(node.value)
                ]
            self._open.discard(id(node))
        self.values[path] = value
        return value

    def _mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = _line(key_node)
            key = self._key(key_node, path, line)
            if key is None:
                continue
            child = f"{path}.{key}" if path else key
            if key in first_line:
                self._problem(
                    line, child, f"duplicate key {key!r} (first on line {first_line[key]})"
                )
            first_line.setdefault(key, line)
            result[key] = self.build(value_node, child, line)
        return result

    def _key(self, node: Node, path: str, line: int) -> str | None:
        """A mapping key, which must be a string; a bad one is reported and skipped."""
        if node.tag == _MERGE_TAG:
            message = "merge keys (<<) are not supported; write the keys out"
        elif not isinstance(node, ScalarNode):
            message = "a key must be a plain word, not a list or mapping"
        else:
            try:
                key = self._constructor.construct_object(node)
            except ConstructorError as exc:
                key, message = None, f"cannot read key {node.value!r}: {exc.problem}"
            else:
                message = f'key {node.value!r} is not a string; quote it: "{node.value}"'
            if isinstance(key, str):
                return key
        self.problems.append(Problem(self.file, line, path, message))
        return None

    def _scalar(self, node: ScalarNode, path: str, line: int) -> Any:
        if node.tag == _STR_TAG and "$" in node.value:
            expanded = self._expand(node.value, path, line)
            if expanded is None:
                return node.value
            if node.style is not None:  # quoted or block: the text stays a string
                return expanded
            # A plain `${PORT}` becomes what a plain `8080` would: an integer.
            tag = self._resolver.resolve(ScalarNode, expanded, (True, False))
            node = ScalarNode(tag, expanded, node.start_mark, node.end_mark)
        try:
            value = self._constructor.construct_object(node)
        except ConstructorError as exc:
            self._problem(line, path, f"cannot read this value: {exc.problem}")
            return None
        if not isinstance(value, str) and value is not None:
            self.sources[path] = node.value
        return value

    def _expand(self, text: str, path: str, line: int) -> str | None:
        """`${VAR}`, `${VAR:-default}` (also when VAR is empty) and `$$` for a dollar."""
        failed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal failed
            ref = match.group(0)
            if ref == "$$":
                return "$"
            body = match.group("body")
            parsed = None if body is None else _REF_BODY_RE.fullmatch(body)
            if parsed is None:
                failed = True
                self._problem(
                    line,
                    path,
                    f"bad reference {text[match.start() : match.start() + 20]!r}: write ${{NAME}}"
                    " or ${NAME:-default} (no nesting), or $$ for a literal $",
                )
                return ref
            name, default = parsed.group("name"), parsed.group("default")
            value = self.environ.get(name)
            if default is not None:
                return value or default
            if value is None:
                failed = True
                self._problem(
                    line,
                    path,
                    f"${{{name}}} is not set and has no default (write ${{{name}:-value}} for one)",
                )
                return ref
            return value

        expanded = _REF_RE.sub(replace, text)
        return None if failed else expanded
