"""Why the wire model is msgspec: the same registration validated by msgspec (master.model,
as the master runs it) and by an equivalent pydantic v2 model, side by side in one run.

    bench/.venv/bin/python -m bench.model_libraries

Prints microseconds per decode-and-validate of a sidecar's registration body, the memory a
record costs, and what each library says about a few bad bodies. Run by hand; the numbers
behind the choice in the issue note.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from typing import Annotated, Any, Literal

from master.model import FieldError, decode_registration

BODY = (
    b'{"id":"web-1","name":"web","address":"10.0.0.5","port":8080,"scheme":"http",'
    b'"tags":["web_crawler","examplehost.com","dirty"],"meta":{"team":"data"},'
    b'"check":{"url":"http://10.0.0.5:9501/health","interval":"10s","timeout":"2s",'
    b'"failures_before_critical":1,"successes_before_passing":1,"deregister_after":"10m"}}'
)
BAD = {
    "port 70000": BODY.replace(b"8080", b"70000"),
    "empty tag": BODY.replace(b'"dirty"', b'""'),
    "unknown field": BODY.replace(b'"scheme"', b'"schema"'),
    "bad interval": BODY.replace(b'"10s"', b'"10 seconds"'),
}
ROUNDS = 50_000


def pydantic_model() -> Any:
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    def seconds(value: Any) -> float:
        from master.model import parse_duration

        return parse_duration(value, "")

    class Check(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        url: Annotated[str, Field(min_length=9, max_length=2048, pattern=r"^https?://\S+$")]
        interval: float = 10.0
        timeout: float | None = None
        failures_before_critical: Annotated[int, Field(ge=1, le=100, strict=True)] = 1
        successes_before_passing: Annotated[int, Field(ge=1, le=100, strict=True)] = 1
        deregister_after: float = 600.0

        _durations = field_validator("interval", "timeout", "deregister_after", mode="before")(
            classmethod(lambda cls, v: None if v is None else seconds(v))
        )

    Tag = Annotated[str, Field(min_length=1, max_length=128)]

    class Registration(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        id: Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")]
        name: Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
        address: Annotated[str, Field(min_length=1, max_length=255)]
        port: Annotated[int, Field(ge=1, le=65535, strict=True)]
        scheme: Literal["http", "https"] = "http"
        tags: Annotated[tuple[Tag, ...], Field(max_length=64)] = ()
        meta: Annotated[dict[str, str], Field(max_length=64)] = {}
        check: Check | None = None

    return Registration


def per_call(call: Any) -> float:
    started = time.perf_counter()
    for _ in range(ROUNDS):
        call()
    return (time.perf_counter() - started) / ROUNDS * 1e6


def kept_bytes(make: Any, count: int = 5_000) -> float:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = [make(BODY.replace(b'"web-1"', b'"web-%d"' % i)) for i in range(count)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    del kept
    return size / count


def main() -> int:
    try:
        model = pydantic_model()
    except ImportError:
        print("pydantic is not installed here: pip install pydantic", file=sys.stderr)
        return 2
    ours = per_call(lambda: decode_registration(BODY))
    theirs = per_call(lambda: model.model_validate_json(BODY))
    print("| library | decode + validate, us | bytes kept per registration |")
    print("|---|---:|---:|")
    print(f"| msgspec (master.model) | {ours:.2f} | {kept_bytes(decode_registration):.0f} |")
    print(
        f"| pydantic {__import__('pydantic').VERSION} | {theirs:.2f} "
        f"| {kept_bytes(model.model_validate_json):.0f} |"
    )
    print(f"\nmsgspec is {theirs / ours:.1f}x faster here.\n\nWhat each says of a bad body:")
    for label, body in BAD.items():
        try:
            decode_registration(body)
        except FieldError as exc:
            ours_text = f"{exc.code} {exc.field}: {exc.message}"
        try:
            model.model_validate_json(body)
        except Exception as exc:
            theirs_text = str(exc).replace("\n", " | ")[:160]
        print(f"- {label}\n  msgspec (ours): {ours_text}\n  pydantic: {theirs_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
