"""The guard against mass eviction: a network fault must not empty the registry.

When most instances of one service go critical together, the cause is more often between
the master and them (a partition, a lost route, an overloaded master) than in all of them
at once; reaping them all would leave their callers with nothing. So the master reaps at
most `share` of one name's instances in any minute (always at least one), and holds the
rest. Unlike Eureka's self-preservation, which keeps the dead for as long as renewals stay
low, a held instance is let go after `hold_max`: the guard delays an eviction, it never
cancels one. The holds are counted (a metric), logged when they begin and end, and shown
on /healthz as an alert.

`instances` is what this master checks of the name: with several masters on etcd each
checks a share, and allowing the share of its own keeps the masters together within the
share of the name (but for the one each may always reap), with no count passed between
them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

import structlog

log = structlog.get_logger("master.eviction")

WINDOW_SECONDS: Final = 60.0
DEFAULT_SHARE: Final = 0.5
DEFAULT_HOLD_MAX: Final = 600.0
PRUNE_AT: Final = 1024  # names remembered before those without a recent reap go


@dataclass(slots=True)
class _Held:
    name: str
    since: float  # monotonic seconds: when the reap was first held back


class EvictionGuard:
    """Decides, reap by reap, whether one more instance of a name may go now."""

    def __init__(
        self,
        share: float = DEFAULT_SHARE,
        hold_max: float = DEFAULT_HOLD_MAX,
        window: float = WINDOW_SECONDS,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self.hold_max = hold_max
        self.window = window
        self._reaped: dict[str, deque[float]] = {}  # name -> times of its recent reaps
        self._held: dict[str, _Held] = {}  # service id -> since when its reap waits
        self.held_total = 0  # reaps held back (a reap held for many rounds counts once)
        self.released_total = 0  # held reaps let go because they waited hold_max

    def allow(self, service_id: str, name: str, instances: int, now: float) -> bool:
        """May `service_id` (one of `instances` registered of `name`) be reaped at `now`?
        True records the reap; False holds it, until a later call says yes."""
        recent = self._recent(name, now)
        # The share of the instances there were when the window began: those reaped in
        # it still count, or each reap would shrink the next one's allowance.
        allowance = max(1, math.floor(self.share * (instances + len(recent))))
        held = self._held.get(service_id)
        if len(recent) < allowance:
            outcome = "reaped"
        elif held is not None and now - held.since >= self.hold_max:
            outcome = "released"
            self.released_total += 1
        else:
            if held is None:
                self._held[service_id] = _Held(name, now)
                self.held_total += 1
                log.warning(
                    "eviction_held",
                    service_id=service_id,
                    name=name,
                    reaped_last_minute=len(recent),
                    allowance=allowance,
                    instances=instances,
                    held_for_at_most_s=self.hold_max,
                )
            return False
        recent.append(now)
        if held is not None:
            del self._held[service_id]
            log.warning(
                "eviction_hold_ended",
                service_id=service_id,
                name=name,
                outcome=outcome,
                held_s=round(now - held.since, 1),
            )
        return True

    def forget(self, service_id: str) -> None:
        """The instance recovered or went away: nothing of it is held any more."""
        held = self._held.pop(service_id, None)
        if held is not None:
            log.info("eviction_hold_ended", service_id=service_id, name=held.name, outcome="gone")

    def holding(self) -> dict[str, int]:
        """Name -> how many of its instances' reaps are held now."""
        counts: dict[str, int] = {}
        for held in self._held.values():
            counts[held.name] = counts.get(held.name, 0) + 1
        return dict(sorted(counts.items()))

    def _recent(self, name: str, now: float) -> deque[float]:
        recent = self._reaped.get(name)
        if recent is None:
            if len(self._reaped) >= PRUNE_AT:  # names long gone: drop those with no reap
                since = now - self.window
                self._reaped = {n: t for n, t in self._reaped.items() if t and t[-1] > since}
            recent = self._reaped[name] = deque()
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        return recent
