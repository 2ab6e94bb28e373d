"""The dashboard's HTML, rendered by the master: the list's first paint, and a service's
page (first paint and every live update after it).

The list is first painted here, then app.js renders the same markup from the API's JSON
and follows it (tests/test_dashboard.py compares the text of the two renderings). A
service's page is rendered here only: service.js asks for its sections again (a blocking
request) and swaps in those that changed.

Every piece of service data is untrusted: it reaches the HTML only through `esc` (text
and attribute values, quotes included) or `quote` (a URL path segment), never as markup.
Nothing here is styled inline (the page's Content-Security-Policy allows no inline
style): the timeline's strip is an SVG whose geometry is attributes.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote as _quote

from master.model import Record, Status, Transition, dumps_compact, format_duration, format_time

STATUSES: Final = ("passing", "warning", "critical", "unknown", "draining")
OUTPUT_SHOWN: Final = 300  # characters of a check's output in the list (all on its page)
FLAPPING_TITLE: Final = "its status changed more than 5 times within 10 minutes"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def quote(segment: str) -> str:
    """A URL path segment or query value, as JavaScript's encodeURIComponent writes it."""
    return _quote(segment, safe="-_.!~*'()")


def hidden_attr(hidden: bool) -> str:
    return " hidden" if hidden else ""


# --- pieces both pages use ---------------------------------------------------------------


def elapsed(seconds: float) -> str:
    """`3 m 12 s`, `45 s`, `2 h 5 m`, `3 d 4 h` (shared.js writes it the same way)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} m"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def time_element(epoch: float, prefix: str = "") -> str:
    """A time in UTC; shared.js shows it in the reader's own time zone."""
    stamp = format_time(epoch)
    shown = stamp.replace("T", " ")[:19] + " UTC"
    return (
        f'<time class="when" datetime="{stamp}" title="{stamp}" data-prefix="{esc(prefix)}">'
        f"{esc(prefix)}{shown}</time>"
    )


def since(record: Record, now: float) -> str:
    """`for 3 m 12 s`, kept ticking by shared.js from `data-since`."""
    if record.status_changed_at <= 0:
        return ""
    stamp = format_time(record.status_changed_at)
    text = elapsed(now - record.status_changed_at)
    return f' <span class="since" data-since="{stamp}" title="since {stamp}">for {text}</span>'


def status_pill(status: Status) -> str:
    return f'<span class="status" data-status="{status.value}">{status.value}</span>'


def flag(record: Record) -> str:
    if not record.flapping:
        return ""
    return f' <span class="flag" title="{FLAPPING_TITLE}">flapping</span>'


def host_port(record: Record) -> str:
    host = f"[{record.address}]" if ":" in record.address else record.address
    return f"{host}:{record.port}"


def checked(record: Record) -> str:
    """The last check's time and duration, or why there is none."""
    check = record.last_check
    if check is None:
        return f'<span class="muted">{"not checked yet" if record.check else "no check"}</span>'
    return (
        time_element(check.at, "checked ")
        + f'<span class="duration"> · {ms(check.duration_ms)}</span>'
    )


def ms(duration_ms: float) -> str:
    """Whole milliseconds, rounded half up (as JavaScript's Math.round)."""
    return f"{math.floor(duration_ms + 0.5)} ms"


def versions_of(entries: Iterable[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """sha256 -> (its label in the catalog, how many documents its name's instances serve)."""
    found: dict[str, tuple[str, int]] = {}
    for entry in entries:
        for document in entry["documents"]:
            found[document["sha256"]] = (document["label"], len(entry["documents"]))
    return found


# --- the list ------------------------------------------------------------------------------


class Filters:
    """The list's filters, as the URL gives them: `?q=` (in the name or id), `?tag=`
    (repeatable; every one must match), `?status=`."""

    def __init__(self, query: Mapping[str, str], tags: list[str]) -> None:
        self.q = query.get("q", "").strip().lower()
        self.tags = list(dict.fromkeys(tags))
        status = query.get("status", "")
        self.status = status if status in STATUSES else ""

    def matches(self, record: Record) -> bool:
        if self.status and record.status.value != self.status:
            return False
        if any(tag not in record.tags for tag in self.tags):
            return False
        return not self.q or self.q in record.name or self.q in record.id.lower()

    @property
    def active(self) -> bool:
        return bool(self.q or self.tags or self.status)


def summary(records: Iterable[Record] | None, filters: Filters) -> str:
    """A button per status with its count (a dash where the counts are not known here)."""
    if records is None:
        shown = dict.fromkeys(("total", *STATUSES), "\u2013")
    else:
        counts = Counter(record.status.value for record in records)
        shown = {"total": str(sum(counts.values()))} | {s: str(counts[s]) for s in STATUSES}
    pressed = "false" if filters.status else "true"
    parts = [
        f'<button type="button" class="stat" data-status="" aria-pressed="{pressed}">'
        f'<span id="count-total" class="count">{shown["total"]}</span> services</button>'
    ]
    for status in STATUSES:
        pressed = "true" if filters.status == status else "false"
        parts.append(
            f'<button type="button" class="stat" data-status="{status}" aria-pressed="{pressed}">'
            f'<span id="count-{status}" class="count">{shown[status]}</span> {status}</button>'
        )
    return "\n".join(parts)


def tag_button(tag: str, selected: bool, count: int | None = None) -> str:
    counted = f'<span class="tag-count">{count}</span>' if count is not None else ""
    pressed = "true" if selected else "false"
    return (
        f'<button type="button" class="tag" data-tag="{esc(tag)}" aria-pressed="{pressed}">'
        f"{esc(tag)}{counted}</button>"
    )


def tag_bar(counts: Mapping[str, int], filters: Filters) -> str:
    names = sorted({*counts, *filters.tags})
    return "".join(tag_button(t, t in filters.tags, counts.get(t, 0)) for t in names)


def why(record: Record) -> str:
    """Why it has its status, the last check's output where that says more, and when."""
    parts = []
    reason = record.status_reason
    if reason:
        parts.append(f'<span class="reason">{esc(reason)}</span>')
    check = record.last_check
    if check is not None:
        code = f"{check.http_status} " if check.http_status else ""
        output = f"{code}{check.output}"
        if check.output and check.output != reason:
            shown = output if len(output) <= OUTPUT_SHOWN else output[: OUTPUT_SHOWN - 1] + "…"
            parts.append(f'<span class="output" title="{esc(output)}">{esc(shown)}</span>')
    if check is not None or not reason:
        parts.append(checked(record))
    return "".join(parts)


def api_cell(record: Record, versions: Mapping[str, tuple[str, int]]) -> str:
    if not record.openapi_sha256:
        return '<span class="muted">\u2013</span>'
    label, documents = versions.get(record.openapi_sha256, ("", 1))
    ident = quote(record.id)
    differs = (
        f' <span class="differs" title="its instances serve {documents} different documents">'
        f"1 of {documents}</span>"
        if documents > 1
        else ""
    )
    return (
        f'<a class="openapi" href="dashboard/services/{ident}/api">{esc(label or "API docs")}</a>'
        f'{differs} <a class="raw" href="v1/services/{ident}/openapi">raw</a>'
    )


def row(
    record: Record, filters: Filters, versions: Mapping[str, tuple[str, int]], now: float
) -> str:
    ident = quote(record.id)
    tags = "".join(tag_button(t, t in filters.tags) for t in record.tags)
    return (
        f'<tr data-id="{esc(record.id)}">'
        f'<td data-label="Status">{status_pill(record.status)}{since(record, now)}{flag(record)}'
        "</td>"
        f'<td data-label="Service"><a class="name" href="dashboard/services/{ident}">'
        f'{esc(record.name)}</a> <code class="id">{esc(record.id)}</code></td>'
        f'<td data-label="Address"><code class="address">{esc(host_port(record))}</code></td>'
        f'<td data-label="Tags">{tags}</td>'
        f'<td data-label="Why">{why(record)}</td>'
        f'<td data-label="API">{api_cell(record, versions)}</td>'
        "</tr>"
    )


def apis_notice(entries: Iterable[dict[str, Any]]) -> str:
    """The names whose instances serve different documents, each with its summary."""
    items = []
    for entry in entries:
        if len(entry["documents"]) < 2:
            continue
        first = entry["documents"][0]["instances"][0]
        breaking = " data-breaking" if any(d["breaking"] for d in entry["diffs"]) else ""
        items.append(
            f'<li data-name="{esc(entry["name"])}"{breaking}>'
            f'<a href="dashboard/services/{quote(first)}">{esc(entry["name"])}</a>: '
            f'<span class="api-summary">{esc(entry["summary"])}</span></li>'
        )
    if not items:
        return ""
    return '<h2>APIs in transition</h2><ul class="api-list">' + "".join(items) + "</ul>"


def shown_text(shown: int, total: int) -> str:
    return f"{shown} of {total} shown"


# --- a service's page: its sections -----------------------------------------------------------


def headline(record: Record, now: float) -> str:
    """`critical for 3 m 12 s: connection refused by 127.0.0.1:8081`"""
    reason = f": {esc(record.status_reason)}" if record.status_reason else ""
    return (
        f'<p class="headline" id="headline">{status_pill(record.status)} '
        f'<span class="sentence">{record.status.value}{since(record, now)}{reason}</span>'
        f"{flag(record)}</p>"
    )


def facts(items: Iterable[tuple[str, str]], css: str = "facts") -> str:
    """A definition list; each item is (term, its description as HTML already escaped)."""
    body = "".join(f"<div><dt>{esc(term)}</dt><dd>{value}</dd></div>" for term, value in items)
    return f'<dl class="{css}">{body}</dl>'


def overview(record: Record, now: float) -> str:
    return (
        f'<h1 id="title"><span class="name">{esc(record.name)}</span> '
        f'<code class="id">{esc(record.id)}</code></h1>{headline(record, now)}'
    )


def check_rule(record: Record) -> str:
    check = record.check
    if check is None:
        return '<span class="muted">none: passing while registered</span>'
    removed = (
        f"removed after {format_duration(check.deregister_after)} critical"
        if check.deregister_after
        else "never removed"
    )
    return (
        f'<code class="check-url">{esc(check.url)}</code> every '
        f"{format_duration(check.interval)} (timeout {format_duration(check.timeout_s)}); "
        f"critical after {check.failures_before_critical} failure"
        f"{'s' if check.failures_before_critical > 1 else ''}, passing after "
        f"{check.successes_before_passing} success"
        f"{'es' if check.successes_before_passing > 1 else ''}; {removed}"
    )


def record_section(record: Record, indexes: tuple[int, int]) -> str:
    items = [
        (
            "address",
            f'<code class="address">{esc(record.scheme)}://{esc(host_port(record))}</code>',
        ),
        ("check", check_rule(record)),
        ("registered", time_element(record.registered_at)),
        ("updated", time_element(record.updated_at)),
        ("index", f"created at {indexes[0]}, last modified at {indexes[1]}"),
    ]
    if record.status_changed_at > 0:
        items.insert(-1, ("status since", time_element(record.status_changed_at)))
    if record.instance:
        items.insert(1, ("instance", f"<code>{esc(record.instance)}</code>"))
    if record.draining:
        items.append(("draining", "yes: the sidecar is taking it out"))
    return "<h2>Record</h2>" + facts(items)


def check_section(record: Record) -> str:
    check = record.last_check
    if check is None:
        return f"<h2>Last check</h2>{checked(record)}"
    items = [
        ("result", status_pill(check.status)),
        ("at", time_element(check.at)),
        ("took", ms(check.duration_ms)),
    ]
    if check.http_status:
        items.append(("HTTP status", str(check.http_status)))
    output = (
        f'<pre class="check-output" tabindex="0">{esc(check.output)}</pre>'
        if check.output
        else '<p class="muted">no output</p>'
    )
    detail = ""
    if check.detail:
        rows = [
            (str(key), f"<code>{esc(v if isinstance(v, str) else dumps_compact(v))}</code>")
            for key, v in sorted(check.detail.items())
        ]
        detail = f'<details class="detail"><summary>Detail</summary>{facts(rows)}</details>'
    return f"<h2>Last check</h2>{facts(items)}{output}{detail}"


def tags_section(record: Record) -> str:
    tags = "".join(
        f'<a class="tag" href="../../?tag={quote(tag)}">{esc(tag)}</a>' for tag in record.tags
    )
    meta = (
        facts(((k, f"<code>{esc(v)}</code>") for k, v in sorted(record.meta.items())), "facts meta")
        if record.meta
        else '<p class="muted">no meta</p>'
    )
    tags = tags or '<span class="muted">no tags</span>'
    return f'<h2>Tags and meta</h2><div class="tags" id="tag-list">{tags}</div>{meta}'


STRIP_WIDTH: Final = 1000


def timeline_section(history: Iterable[Transition], now: float) -> str:
    changes = list(history)
    if not changes:
        return '<h2>Timeline</h2><p class="muted">No status change recorded yet.</p>'
    start = float(changes[0].at)
    span = max(now - start, 1.0)
    rects = []
    items = []
    for i, change in enumerate(changes):
        begin = float(change.at)
        end = float(changes[i + 1].at) if i + 1 < len(changes) else max(now, begin)
        x = (begin - start) / span * STRIP_WIDTH
        width = max((end - begin) / span * STRIP_WIDTH, 2.0)
        rects.append(
            f'<rect class="segment" data-status="{change.to.value}" x="{x:.1f}" y="0" '
            f'width="{width:.1f}" height="10"><title>{change.to.value}</title></rect>'
        )
        lasted = "until now" if i + 1 == len(changes) else f"for {elapsed(end - begin)}"
        output = f'<span class="output">{esc(change.output)}</span>' if change.output else ""
        items.append(
            f'<li data-to="{change.to.value}">{time_element(change.at)} '
            f'<span class="change">{status_pill(change.from_)} → {status_pill(change.to)}</span> '
            f'<span class="lasted">{lasted}</span>{output}</li>'
        )
    strip = (
        f'<svg class="strip" viewBox="0 0 {STRIP_WIDTH} 10" preserveAspectRatio="none" '
        f'aria-hidden="true" focusable="false">{"".join(rects)}</svg>'
    )
    first = time_element(start)
    return (
        f'<h2>Timeline <span class="muted">({len(changes)} changes since {first})</span></h2>'
        f'{strip}<ol class="timeline" id="timeline" reversed>{"".join(reversed(items))}</ol>'
    )


def instances_section(
    name: str,
    records: list[Record],
    current: str,
    versions: Mapping[str, tuple[str, int]],
    now: float,
) -> str:
    cards = []
    for record in records:
        here = record.id == current
        label = versions.get(record.openapi_sha256 or "", ("", 1))[0]
        api = (
            f'<span class="version">API {esc(label)}</span>'
            if record.openapi_sha256
            else '<span class="muted">no API document</span>'
        )
        who = (
            f'<span class="name">{esc(record.id)}</span> <span class="muted">(this page)</span>'
            if here
            else f'<a class="name" href="./{quote(record.id)}">{esc(record.id)}</a>'
        )
        current_attr = ' aria-current="page"' if here else ""
        cards.append(
            f'<li class="instance{" current" if here else ""}" data-id="{esc(record.id)}"'
            f"{current_attr}><div>{who}</div>"
            f"<div>{status_pill(record.status)}{since(record, now)}{flag(record)}</div>"
            f'<div><code class="address">{esc(host_port(record))}</code></div><div>{api}</div></li>'
        )
    count = len(records)
    return (
        f'<h2>Instances of {esc(name)} <span class="muted">({count})</span></h2>'
        f'<ul class="instances" id="instances">{"".join(cards)}</ul>'
    )


def api_section(record: Record, entry: dict[str, Any] | None) -> str:
    ident = quote(record.id)
    if not record.openapi_sha256:
        links = '<p class="muted">This instance registered no OpenAPI document.</p>'
    else:
        documents = entry["documents"] if entry else []
        own = next((d for d in documents if d["sha256"] == record.openapi_sha256), None)
        title = f"{own['title']} {own['version']}".strip() if own else ""
        links = (
            f'<p class="api-links"><a class="button" id="api-docs-link" href="./{ident}/api">'
            f"Browse the API{esc(' · ' + title) if title else ''}</a> "
            f'<a class="raw" href="../../v1/services/{ident}/openapi">raw document (JSON)</a></p>'
        )
    if entry is None:
        return "<h2>API</h2>" + links
    summary = f'<p class="api-summary" id="api-summary">{esc(entry["summary"])}</p>'
    served = []
    for document in entry["documents"]:
        holders = ", ".join(
            f'<a href="./{quote(i)}">{esc(i)}</a>'
            if i != record.id
            else f'<span class="here">{esc(i)}</span>'
            for i in document["instances"]
        )
        baseline = ' data-baseline="true"' if document["baseline"] else ""
        served.append(
            f'<li data-sha256="{esc(document["sha256"])}"{baseline}>'
            f'<span class="version">{esc(document["label"])}</span> '
            f'<span class="muted">{esc(document["title"])}</span> on {holders}</li>'
        )
    if entry["without_document"]:
        served.append(
            '<li class="muted">no document on '
            + ", ".join(esc(i) for i in entry["without_document"])
            + "</li>"
        )
    diffs = "".join(_diff(diff, entry) for diff in entry["diffs"])
    return (
        f"<h2>API</h2>{links}{summary}"
        f'<ul class="documents" id="documents">{"".join(served)}</ul>{diffs}'
    )


def _diff(diff: dict[str, Any], entry: dict[str, Any]) -> str:
    labels = {d["sha256"]: d["label"] for d in entry["documents"]}
    head = (
        f"<h3>What changed from {esc(labels.get(diff['from'], '?'))} "
        f"to {esc(labels.get(diff['to'], '?'))}</h3>"
    )
    if not diff["compared"]:
        body = f'<p class="muted">not compared: {esc(diff["not_compared_because"])}</p>'
    elif not diff["changes"]:
        body = '<p class="muted">nothing in operations, parameters or required fields</p>'
    else:
        items = "".join(
            (
                '<li class="change" data-breaking="true"><span class="breaking">breaking</span> '
                if change["breaking"]
                else '<li class="change">'
            )
            + f"{esc(change['text'])}</li>"
            for change in diff["changes"]
        )
        if diff["changes_left_off"]:
            items += f'<li class="muted">and {diff["changes_left_off"]} more</li>'
        body = f'<ul class="changes">{items}</ul>'
    return f'<div class="diff">{head}{body}</div>'


def missing(ident: str) -> str:
    return (
        f'<h1 id="title"><code class="id">{esc(ident)}</code></h1>'
        '<p class="headline" id="headline"><span class="status" data-status="unknown">'
        "not registered</span> No service is registered with this id (any more). "
        "This page shows it if it registers.</p>"
    )
