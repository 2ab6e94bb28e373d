"""The mass-eviction guard: its rule as a table, and a real master holding back the reaps
when most instances of one service go critical at once."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from master.eviction import EvictionGuard
from tests.conftest import Master, wait_until

# --- the rule ---------------------------------------------------------------------------


def test_a_lone_instance_may_always_go() -> None:
    guard = EvictionGuard(share=0.5, hold_max=600)
    assert guard.allow("web-1", "web", instances=1, now=0.0)


def test_at_most_the_share_a_minute_then_more_once_the_minute_has_passed() -> None:
    guard = EvictionGuard(share=0.5, hold_max=600)
    # Ten instances, eight critical: five may go this minute (the reaped still count).
    registered, decisions = 10, []
    for i in range(8):
        allowed = guard.allow(f"web-{i}", "web", instances=registered, now=1.0)
        registered -= allowed
        decisions.append(allowed)
    assert decisions == [True] * 5 + [False] * 3
    assert guard.holding() == {"web": 3}
    assert guard.held_total == 3
    assert not guard.allow("web-5", "web", instances=5, now=60.9)  # still in the minute
    assert guard.held_total == 3  # a reap held round after round counts once
    assert guard.allow("web-5", "web", instances=5, now=61.5)
    assert guard.holding() == {"web": 2}


def test_names_are_guarded_apart() -> None:
    guard = EvictionGuard(share=0.5, hold_max=600)
    assert guard.allow("a-1", "a", instances=2, now=0.0)
    assert not guard.allow("a-2", "a", instances=1, now=0.0)
    assert guard.allow("b-1", "b", instances=2, now=0.0)


def test_a_held_reap_goes_ahead_after_hold_max() -> None:
    guard = EvictionGuard(share=0.5, hold_max=30)
    assert guard.allow("web-1", "web", instances=4, now=0.0)
    assert guard.allow("web-2", "web", instances=3, now=0.0)
    assert not guard.allow("web-3", "web", instances=2, now=1.0)
    assert not guard.allow("web-3", "web", instances=2, now=30.9)
    assert guard.allow("web-3", "web", instances=2, now=31.0)
    assert (guard.released_total, guard.holding()) == (1, {})


def test_a_recovered_instance_is_no_longer_held() -> None:
    guard = EvictionGuard(share=0.5, hold_max=600)
    guard.allow("web-1", "web", instances=2, now=0.0)
    assert not guard.allow("web-2", "web", instances=1, now=0.0)
    guard.forget("web-2")
    assert guard.holding() == {}


def test_share_one_is_no_guard() -> None:
    guard = EvictionGuard(share=1.0, hold_max=600)
    assert all(guard.allow(f"web-{i}", "web", instances=5 - i, now=0.0) for i in range(5))


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        EvictionGuard(share=share)


# --- a real master ----------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nobody listens on: a check to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def instance(i: int, url: str) -> dict[str, Any]:
    return {
        "name": "web",
        "address": "127.0.0.1",
        "port": 8000 + i,
        "check": {"url": url, "interval": "1s", "deregister_after": "1s"},
    }


def metric(master: Master, line_start: str) -> float | None:
    for line in master.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_master_holds_back_reaps_when_most_instances_go_critical_at_once(
    start_master: Any,
) -> None:
    """Five instances, four of them critical at once (80 %): with a share of 0.5 the master
    reaps two in the minute and holds two, says so on /healthz, in the log and the
    metrics, and lets them go after --eviction-hold-max; the live one stays."""
    master = start_master("--eviction-share", "0.5", "--eviction-hold-max", "4s")
    live = master.url + "/healthz"  # the master's own liveness: a check that passes
    dead = f"http://127.0.0.1:{closed_port()}/health"
    for i in range(5):
        body = instance(i, live if i == 0 else dead)
        assert master.request("PUT", f"/v1/services/web-{i}", body).status == 200

    def ids() -> list[str]:
        return sorted(r["id"] for r in master.request("GET", "/v1/services").json()["services"])

    def healthz() -> dict[str, Any]:
        return master.request("GET", "/healthz").json()

    wait_until(lambda: len(ids()) == 3, timeout=10, message="two reaped")
    held = wait_until(
        lambda: (h := healthz()).get("eviction_guard", {}).get("holding") == {"web": 2} and h,
        timeout=5,
        message="the guard to hold two",
    )
    assert held["alerts"] == ["eviction_guard_holding"]
    assert held["eviction_guard"]["holding"] == {"web": 2}
    assert held["status"] == "ok"  # an alert, not a fault of the master
    assert len(ids()) == 3 and "web-0" in ids()
    assert metric(master, 'picoapi_evictions_held{name="web"}') == 2
    events = [e for e in master.events() if e["event"] == "eviction_held"]
    assert len(events) == 2 and {e["name"] for e in events} == {"web"}
    held_at = time.monotonic()
    time.sleep(1.5)
    assert len(ids()) == 3  # still held, round after round

    wait_until(lambda: ids() == ["web-0"], timeout=10, message="the held ones to go")
    assert time.monotonic() - held_at >= 2.0  # not before their hold ran out
    assert "alerts" not in master.request("GET", "/healthz").json()
    assert metric(master, 'picoapi_evictions_guarded_total{outcome="released"}') == 2
    assert metric(master, 'picoapi_evictions_guarded_total{outcome="held"}') == 2
    reaped = [e["service_id"] for e in master.events() if e["event"] == "service_reaped"]
    assert sorted(reaped) == ["web-1", "web-2", "web-3", "web-4"]


def test_without_the_guard_all_four_go_together(start_master: Any) -> None:
    """The same outage with --eviction-share 1: every critical instance goes within a
    round, which is what the guard is there to slow down."""
    master = start_master("--eviction-share", "1")
    dead = f"http://127.0.0.1:{closed_port()}/health"
    for i in range(5):
        body = instance(i, master.url + "/healthz" if i == 0 else dead)
        assert master.request("PUT", f"/v1/services/web-{i}", body).status == 200
    wait_until(
        lambda: len(master.request("GET", "/v1/services").json()["services"]) == 1, timeout=10
    )
    assert not [e for e in master.events() if e["event"] == "eviction_held"]
