"""`GET /v1/catalog/apis`: the OpenAPI documents each service name serves, and how they
differ between its instances.

Per name (of those with at least one document): the distinct documents (by sha256), each
with its `info.title` and `info.version` and the instances serving it; the instances
serving none; and, when the instances serve more than one document, what changed from
each document to the *baseline*: operations (`METHOD /path`) added or removed, parameters
added, removed or made (not) required, the request body or its top-level fields made
(not) required. A removal and a newly required input are marked `breaking`: a client
written against the old document may fail against the new one. A one-line summary says
it the way an operator reads a rollout: `2 of 5 instances on 1.5.0; 1 breaking change:
DELETE /items removed`.

The baseline is the document with the highest `info.version` when the versions differ and
all read as versions (`1.5.0`, `v2`, `2024.1`), else the one registered last (the newest
`updated_at` among its instances): the version being rolled out, which is what the old
ones are compared with.

Bounded work: documents are immutable by sha256, so what a diff needs of each (its
"surface") is read once and kept (SURFACES_MAX of them), and so is each diff. A document
over DIFF_MAX_BYTES is listed but not compared (the diff says so); `$ref`s are followed
only within the document, and only so deep. Text taken from a document (titles, paths,
names) is cut to TEXT_MAX characters, and any character that is not printable (a bidi
override, a zero width: the registry refuses them in registrations, but a document is the
service's own) is shown as an escape, so a page showing it cannot be made to lie.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from aiohttp import web

from master.api import REGISTRY, index_of, json_response, wait_of
from master.errors import BadRequest
from master.model import Document, FieldError, Record, check_name, loads_json
from master.registry import Registry

DIFF_MAX_BYTES: Final = 4 << 20  # a larger document is listed, not compared
SURFACES_MAX: Final = 64  # documents whose surface is kept
DIFFS_MAX: Final = 256  # diffs kept
CHANGES_MAX: Final = 200  # changes listed per diff (the rest counted in changes_left_off)
FIELDS_MAX: Final = 256  # a request body's required fields read per schema
TEXT_MAX: Final = 200
REF_DEPTH_MAX: Final = 16
SUMMARY_CHANGES: Final = 3  # breaking changes the summary names
METHODS: Final = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_TEMPLATE_RE: Final = re.compile(r"\{[^}/]*\}")
_VERSION_RE: Final = re.compile(r"^v?\d+([.\-+_~][0-9A-Za-z.\-+_~]*)?$")


# --- text from a document ----------------------------------------------------------------


def safe_text(value: object, limit: int = TEXT_MAX) -> str:
    """A document's value as short, printable text: a non-string as its JSON, every
    character that is not printable as a visible `\\u....` escape, at most `limit` long."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = msgspec.json.encode(value).decode()
        except RecursionError:  # a value nested past what can be encoded
            text = "…"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if not text.isprintable():
        text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return text


# --- what a client of a document relies on -----------------------------------------------


@dataclass(frozen=True)
class Operation:
    label: str  # "DELETE /items/{id}", as the document writes the path
    # (in, name) -> required
    parameters: dict[tuple[str, str], bool] = field(default_factory=dict)
    body_required: bool = False
    body_fields: frozenset[str] = frozenset()  # the request body's required top-level fields
    has_body: bool = False


@dataclass(frozen=True)
class Surface:
    """A document as the diff sees it: its operations by `METHOD /path` with every path
    parameter's name left out (`/items/{id}` and `/items/{item}` are one operation), or why
    it cannot be compared."""

    title: str
    version: str
    operations: dict[str, Operation]
    unreadable: str | None = None  # why not compared


class _Info(msgspec.Struct):
    title: Any = None
    version: Any = None


class _Head(msgspec.Struct):
    info: Any = None


_HEAD: Final = msgspec.json.Decoder(_Head)


def _head(body: bytes) -> tuple[str, str]:
    """title and version, read without building the rest of the document."""
    try:
        info = _HEAD.decode(body).info
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return "", ""
    if not isinstance(info, dict):
        return "", ""
    return safe_text(info.get("title")), safe_text(info.get("version"))


def surface(document: Document) -> Surface:
    title, version = _head(document.body)
    if len(document.body) > DIFF_MAX_BYTES:
        reason = (
            f"the document is {_size(len(document.body))}; "
            f"documents over {_size(DIFF_MAX_BYTES)} are not compared"
        )
        return Surface(title, version, {}, reason)
    try:
        parsed = loads_json(document.body)
    except FieldError as exc:
        return Surface(title, version, {}, f"the document is not readable JSON: {exc.message}")
    if not isinstance(parsed, dict):
        return Surface(title, version, {}, "the document is not a JSON object")
    return Surface(title, version, _operations(parsed))


def _size(count: int) -> str:
    if count >= 1 << 20:
        return f"{count / (1 << 20):.1f} MiB".replace(".0 ", " ")
    return f"{count / 1024:.1f} KiB".replace(".0 ", " ")


class _Refs:
    """A document's local `$ref`s (`#/components/...`), each pointer walked once: a
    document naming one long pointer from thousands of places costs its length once, not
    thousands of times (minutes of a blocked loop, for a document of 2 MiB)."""

    __slots__ = ("memo", "root", "targets")

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.targets: dict[str, Any] = {}
        # what was read of one node (a schema or a request body named from thousands of
        # operations is read once): (what, id) -> (the node, kept alive, what it gave)
        self.memo: dict[tuple[str, int], tuple[Any, Any]] = {}

    def resolve(self, node: Any) -> Any:
        """`node` with local `$ref`s followed; an external or broken one is left as it
        is, a chain longer than REF_DEPTH_MAX (a cycle) is nothing."""
        for _ in range(REF_DEPTH_MAX):
            if not isinstance(node, dict):
                return node
            ref = node.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return node
            target = self.targets.get(ref, self)  # self: not walked yet
            if target is self:
                target = self.targets[ref] = self._walk(ref)
            node = target
        return {}

    def _walk(self, ref: str) -> Any:
        target: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and _is_index(part, len(target)):
                target = target[int(part)]
            else:
                return {}
        return target


def _is_index(part: str, length: int) -> bool:
    """Whether a JSON pointer token is an index into a list this long: ASCII digits
    only (`²` is a digit to `isdigit` but no number to `int`), and not so many of them
    that `int` refuses to read them."""
    return part.isascii() and part.isdigit() and len(part) <= 18 and int(part) < length


def _operations(root: dict[str, Any]) -> dict[str, Operation]:
    paths = root.get("paths")
    refs = _Refs(root)
    operations: dict[str, Operation] = {}
    if not isinstance(paths, dict):
        return operations
    for path, item in paths.items():
        item = refs.resolve(item)
        if not isinstance(path, str) or not isinstance(item, dict):
            continue
        shared = _parameters(refs, item.get("parameters"))
        for method in METHODS:
            operation = refs.resolve(item.get(method))
            if not isinstance(operation, dict):
                continue
            label = f"{method.upper()} {safe_text(path)}"
            key = f"{method.upper()} {_TEMPLATE_RE.sub('{}', path)}"
            own = _parameters(refs, operation.get("parameters"))
            parameters = {**shared, **own}
            body = parameters.pop(("body", ""), None)  # Swagger 2's body parameter
            fields, has_body, required = _body(refs, operation.get("requestBody"))
            if body is not None:
                fields, has_body, required = body[1], True, body[0]
            operations[key] = Operation(
                label,
                {k: v[0] for k, v in parameters.items()},
                body_required=required,
                body_fields=fields,
                has_body=has_body,
            )
    return operations


def _parameters(refs: _Refs, items: Any) -> dict[tuple[str, str], Any]:
    """(in, name) -> (required, required body fields), path parameters left out (a path
    template's names are no client's concern: `/items/{id}` is `/items/{item}`);
    Swagger 2's body parameter goes under ("body", "")."""
    found: dict[tuple[str, str], Any] = {}
    if not isinstance(items, list):
        return found
    for item in items:
        item = refs.resolve(item)
        if not isinstance(item, dict):
            continue
        where, name = item.get("in"), item.get("name")
        if not isinstance(where, str) or not isinstance(name, str):
            continue
        required = bool(item.get("required"))
        if where == "body":
            found[("body", "")] = (required, _required_fields(refs, item.get("schema")))
        elif where != "path":  # path parameters are the path's: compared with it
            found[(where, name)] = (required, frozenset())
    return found


def _body(refs: _Refs, body: Any) -> tuple[frozenset[str], bool, bool]:
    """(required fields, has a body, body required) of an OpenAPI 3 requestBody."""
    body = refs.resolve(body)
    if not isinstance(body, dict):
        return frozenset(), False, False
    found = refs.memo.get(("body", id(body)))
    if found is None:
        found = refs.memo[("body", id(body))] = (body, _read_body(refs, body))
    result: tuple[frozenset[str], bool, bool] = found[1]
    return result


def _read_body(refs: _Refs, body: dict[str, Any]) -> tuple[frozenset[str], bool, bool]:
    content = body.get("content")
    schema: Any = None
    if isinstance(content, dict) and content:
        kinds = [k for k in content if isinstance(k, str)]
        json_kinds = [k for k in kinds if k == "application/json" or k.endswith("+json")]
        chosen = (json_kinds or kinds)[:1]
        media = content.get(chosen[0]) if chosen else None
        schema = media.get("schema") if isinstance(media, dict) else None
    return _required_fields(refs, schema), True, bool(body.get("required"))


def _required_fields(refs: _Refs, schema: Any) -> frozenset[str]:
    schema = refs.resolve(schema)
    if not isinstance(schema, dict):
        return frozenset()
    found = refs.memo.get(("fields", id(schema)))
    if found is None:
        found = refs.memo[("fields", id(schema))] = (schema, _read_fields(refs, schema))
    result: frozenset[str] = found[1]
    return result


def _read_fields(refs: _Refs, schema: dict[str, Any]) -> frozenset[str]:
    names: set[str] = set()
    parts = [schema]
    all_of = schema.get("allOf")
    if isinstance(all_of, list):
        parts += [refs.resolve(part) for part in all_of[:32]]
    for part in parts:
        required = part.get("required") if isinstance(part, dict) else None
        if isinstance(required, list):
            names.update(safe_text(n) for n in required[:FIELDS_MAX] if isinstance(n, str))
        if len(names) >= FIELDS_MAX:
            break
    return frozenset(sorted(names)[:FIELDS_MAX])


# --- the diff ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diff:
    """What changed between two documents: the first CHANGES_MAX changes, breaking ones
    first, and how many there are (a diff of thousands of operations is counted, not
    built: each change listed costs a dict)."""

    changes: list[dict[str, Any]]
    breaking: int
    total: int


class _Changes:
    """Changes as they are found, in order: the breaking ones and the others apart, each
    kept up to CHANGES_MAX (what the answer lists), all of them counted."""

    def __init__(self) -> None:
        self.breaking: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self.breaking_count = 0
        self.total = 0
        # a pair of required-field sets compared once, however many operations share it
        self.fields: dict[tuple[int, int], tuple[Any, Any, list[str], list[str]]] = {}

    def room(self, breaking: bool) -> int:
        return CHANGES_MAX - len(self.breaking if breaking else self.other)

    def add(self, kind: str, operation: str, text: str, breaking: bool, **more: Any) -> None:
        self.count(breaking, 1)
        if self.room(breaking) > 0:
            kept = self.breaking if breaking else self.other
            kept.append(
                {"kind": kind, "operation": operation, "text": text, "breaking": breaking, **more}
            )

    def count(self, breaking: bool, count: int) -> None:
        self.total += count
        if breaking:
            self.breaking_count += count

    def field_diff(self, old: frozenset[str], new: frozenset[str]) -> tuple[list[str], list[str]]:
        """(now required, no longer required), sorted."""
        key = (id(old), id(new))
        found = self.fields.get(key)
        if found is None:
            found = self.fields[key] = (old, new, sorted(new - old), sorted(old - new))
        return found[2], found[3]

    def result(self) -> Diff:
        changes = (self.breaking + self.other)[:CHANGES_MAX]
        return Diff(changes, self.breaking_count, self.total)


def diff(old: Surface, new: Surface) -> Diff:
    """What changed from `old` to `new`, breaking changes first, each group by operation."""
    changes = _Changes()
    for key in sorted(old.operations.keys() - new.operations.keys()):
        label = old.operations[key].label
        changes.add("operation_removed", label, f"{label} removed", True)
    for key in sorted(new.operations.keys() - old.operations.keys()):
        label = new.operations[key].label
        changes.add("operation_added", label, f"{label} added", False)
    for key in sorted(old.operations.keys() & new.operations.keys()):
        _operation_diff(old.operations[key], new.operations[key], changes)
    return changes.result()


def _operation_diff(old: Operation, new: Operation, changes: _Changes) -> None:
    label = new.label
    for where, name in sorted(old.parameters.keys() - new.parameters.keys()):
        what = f"{where} parameter '{safe_text(name)}'"
        changes.add(
            "parameter_removed",
            label,
            f"{label}: {what} removed",
            True,
            parameter={"in": where, "name": safe_text(name)},
        )
    for where, name in sorted(new.parameters.keys() - old.parameters.keys()):
        required = new.parameters[(where, name)]
        what = f"{'required ' if required else ''}{where} parameter '{safe_text(name)}'"
        changes.add(
            "parameter_added",
            label,
            f"{label}: {what} added",
            required,
            parameter={"in": where, "name": safe_text(name)},
            required=required,
        )
    for where, name in sorted(old.parameters.keys() & new.parameters.keys()):
        before, after = old.parameters[(where, name)], new.parameters[(where, name)]
        if before == after:
            continue
        what = f"{where} parameter '{safe_text(name)}'"
        text = f"{label}: {what} {'now required' if after else 'no longer required'}"
        changes.add(
            "parameter_required_changed",
            label,
            text,
            after,
            parameter={"in": where, "name": safe_text(name)},
            required=after,
        )
    if new.body_required != old.body_required:
        after = new.body_required
        text = f"{label}: request body {'now required' if after else 'no longer required'}"
        changes.add("body_required_changed", label, text, after, required=after)
    if not (old.has_body or new.has_body) or old.body_fields is new.body_fields:
        return
    now_required, not_required = changes.field_diff(old.body_fields, new.body_fields)
    for names, breaking in ((now_required, True), (not_required, False)):
        room = max(0, changes.room(breaking))
        for name in names[:room]:
            state = "now required" if breaking else "no longer required"
            changes.add(
                "body_field_required_changed",
                label,
                f"{label}: request body field '{name}' {state}",
                breaking,
                field=name,
                required=breaking,
            )
        changes.count(breaking, max(0, len(names) - room))


# --- the catalog -----------------------------------------------------------------------------


def version_key(version: str) -> tuple[Any, ...] | None:
    """A sortable key for `1.5.0`, `v2`, `1.5.0-rc.1` (a pre-release before its release),
    or None for text that is no version."""
    if not _VERSION_RE.match(version):
        return None
    main, dash, pre = version.lstrip("v").partition("-")
    parts = tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+_~]", main) if p)
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".") if p)
    return (parts, 0 if dash else 1, pre_key)


class ApiCatalog:
    """Surfaces and diffs, kept by sha256 (documents never change under their sha)."""

    def __init__(self) -> None:
        self._surfaces: OrderedDict[str, Surface] = OrderedDict()
        self._diffs: OrderedDict[tuple[str, str], Diff] = OrderedDict()

    def surface(self, document: Document) -> Surface:
        found = self._surfaces.get(document.sha256)
        if found is None:
            found = self._surfaces[document.sha256] = surface(document)
            while len(self._surfaces) > SURFACES_MAX:
                self._surfaces.popitem(last=False)
        else:
            self._surfaces.move_to_end(document.sha256)
        return found

    def diff(self, old: Document, new: Document) -> Diff:
        key = (old.sha256, new.sha256)
        found = self._diffs.get(key)
        if found is None:
            found = self._diffs[key] = diff(self.surface(old), self.surface(new))
            while len(self._diffs) > DIFFS_MAX:
                self._diffs.popitem(last=False)
        else:
            self._diffs.move_to_end(key)
        return found

    def entries(self, registry: Registry, name: str | None = None) -> list[dict[str, Any]]:
        """One entry per service name that has a document (only `name`'s, if given)."""
        by_name: dict[str, list[Record]] = {}
        records: Iterable[Record] = (
            registry.query(name=name) if name is not None else registry.records()
        )
        for record in records:
            by_name.setdefault(record.name, []).append(record)
        entries = []
        for service in sorted(by_name):
            entry = self.entry(registry, service, sorted(by_name[service], key=lambda r: r.id))
            if entry is not None:
                entries.append(entry)
        return entries

    def entry(self, registry: Registry, name: str, records: list[Record]) -> dict[str, Any] | None:
        holders: dict[str, list[Record]] = {}
        documents: dict[str, Document] = {}
        without: list[str] = []
        for record in records:
            document = registry.document(record.openapi_sha256)
            if document is None:
                without.append(record.id)
                continue
            documents[document.sha256] = document
            holders.setdefault(document.sha256, []).append(record)
        if not documents:
            return None
        surfaces = {sha: self.surface(doc) for sha, doc in documents.items()}
        baseline, rule = _baseline(surfaces, holders)
        labels = _labels(surfaces)
        listed = sorted(
            documents,
            key=lambda sha: (sha != baseline, -len(holders[sha]), labels[sha], sha),
        )
        total = len(records)
        diffs = []
        for sha in listed:
            if sha == baseline:
                continue
            diffs.append(self._diff_entry(documents[sha], documents[baseline], surfaces))
        return {
            "name": name,
            "instances": total,
            "documents": [
                {
                    "sha256": sha,
                    "title": surfaces[sha].title,
                    "version": surfaces[sha].version,
                    "label": labels[sha],
                    "bytes": len(documents[sha].body),
                    "instances": [r.id for r in holders[sha]],
                    "baseline": sha == baseline,
                }
                for sha in listed
            ],
            "without_document": without,
            "baseline": baseline,
            "baseline_rule": rule,
            "diffs": diffs,
            "summary": _summary(len(holders[baseline]), total, labels[baseline], diffs),
        }

    def _diff_entry(
        self, old: Document, new: Document, surfaces: dict[str, Surface]
    ) -> dict[str, Any]:
        reason = surfaces[old.sha256].unreadable or surfaces[new.sha256].unreadable
        found = Diff([], 0, 0) if reason else self.diff(old, new)
        changes = found.changes
        return {
            "from": old.sha256,
            "to": new.sha256,
            "from_version": surfaces[old.sha256].version,
            "to_version": surfaces[new.sha256].version,
            "compared": reason is None,
            "not_compared_because": reason,
            "breaking": found.breaking,
            "changes": changes,
            "changes_left_off": found.total - len(changes),
        }


def _baseline(surfaces: dict[str, Surface], holders: dict[str, list[Record]]) -> tuple[str, str]:
    keys = {sha: version_key(s.version) for sha, s in surfaces.items()}
    distinct = {s.version for s in surfaces.values()}
    versions = {sha: key for sha, key in keys.items() if key is not None}
    if len(distinct) == len(surfaces) == len(versions):
        return max(versions, key=lambda sha: versions[sha]), "highest info.version"
    newest = max(
        surfaces,
        key=lambda sha: (max(float(r.updated_at) for r in holders[sha]), sha),
    )
    return newest, "newest registration"


def _labels(surfaces: dict[str, Surface]) -> dict[str, str]:
    """Each document's name in a summary: its version, with a short sha where two share a
    version (or it has none)."""
    counts: dict[str, int] = {}
    for s in surfaces.values():
        counts[s.version] = counts.get(s.version, 0) + 1
    labels = {}
    for sha, s in surfaces.items():
        if not s.version:
            labels[sha] = f"sha256 {sha[:8]}"
        elif counts[s.version] > 1:
            labels[sha] = f"{s.version} ({sha[:8]})"
        else:
            labels[sha] = s.version
    return labels


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _summary(on_baseline: int, total: int, label: str, diffs: list[dict[str, Any]]) -> str:
    if not diffs:
        if on_baseline == total:
            return f"{'the one instance' if total == 1 else f'all {total} instances'} on {label}"
        return f"{on_baseline} of {total} instances on {label}"
    head = f"{on_baseline} of {total} instances on {label}"
    breaking: list[str] = []
    changed = 0
    for entry in diffs:
        changed += len(entry["changes"]) + entry["changes_left_off"]
        for change in entry["changes"]:
            if change["breaking"] and change["text"] not in breaking:
                breaking.append(change["text"])
    left_off = sum(1 for entry in diffs if entry["changes_left_off"])
    if breaking:
        named = ", ".join(breaking[:SUMMARY_CHANGES])
        more = len(breaking) - SUMMARY_CHANGES
        tail = f" and {more} more" if more > 0 else ""
        plus = "+" if left_off else ""
        return f"{head}; {_plural(len(breaking), 'breaking change')}{plus}: {named}{tail}"
    skipped = next((e for e in diffs if not e["compared"]), None)
    if skipped is not None:
        return f"{head}; not compared: {skipped['not_compared_because']}"
    if changed:
        return f"{head}; no breaking change ({_plural(changed, 'change')})"
    return f"{head}; no change in operations, parameters or required fields"


# --- HTTP --------------------------------------------------------------------------------------

CATALOG: Final = web.AppKey("api_catalog", ApiCatalog)


async def list_apis(request: web.Request) -> web.Response:
    """`{"index": N, "apis": [entry, ...]}`; `?name=` one name's (its index then the
    name's: a blocking query on it wakes only when that name's records change)."""
    registry = request.app[REGISTRY]
    name = request.query.get("name")
    if name is not None:
        try:
            name = check_name(name)
        except FieldError as exc:
            raise BadRequest(exc.message, field="name") from None
    index = await _block(request, registry, name)
    entries = request.app[CATALOG].entries(registry, name)
    return json_response({"index": index, "apis": entries})


async def _block(request: web.Request, registry: Registry, name: str | None) -> int:
    index = index_of(request)
    if name is None:
        if index is not None:
            await registry.wait(index, wait_of(request))
        return registry.index
    if index is not None:
        await registry.wait_name(name, index, wait_of(request))
    return registry.name_index(name)


def add_routes(app: web.Application) -> None:
    if CATALOG not in app:  # the dashboard shares it
        app[CATALOG] = ApiCatalog()
    app.router.add_get("/v1/catalog/apis", list_apis)
