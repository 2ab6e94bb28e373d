"""Who checks what when several masters share one registry (etcd): membership, and each
service's owner by rendezvous hashing.

Each master holds one key under `members/`, on a lease of `--member-ttl` that it keeps
alive; it is a member while that key exists. Every master sees the same members through
the store's watch, and each service is checked by the member that scores highest for it
(rendezvous, or highest-random-weight, hashing). Why that and not an elected leader
handing out assignments: every master reaches the same answer from the same member list
on its own, nothing has to be written or kept for it, and when a master dies or joins
only its share moves. A dead master's key lapses within one TTL; the others see it go,
take its share and check each of those services within about a second, so no service
waits longer than TTL plus one check interval. A master that cannot renew its lease for
a whole TTL stops checking: the others will have taken its share.

A master on a local store (SQLite, memory) is the only member: `Solo` owns everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from master.model import encode
from master.shared.daemon import cancel_and_wait
from master.store.etcd_gateway import EtcdError

if TYPE_CHECKING:
    from master.store.etcd import EtcdStore

log = structlog.get_logger("master.cluster")

DEFAULT_MEMBER_TTL: Final = 10.0

OwnershipListener = Callable[[], None]


class Ownership(Protocol):
    """Which services this master checks."""

    def owns(self, service_id: str) -> bool: ...

    def add_listener(self, listener: OwnershipListener) -> None:
        """Called after the share may have moved (a member came or went)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict[str, object]: ...


class Solo:
    """The one master of a local store: it checks every service."""

    def owns(self, service_id: str) -> bool:
        return True

    def add_listener(self, listener: OwnershipListener) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def describe(self) -> dict[str, object]:
        return {"members": 1}


def score(member: str, service_id: str) -> int:
    """A member's weight for a service: the same on every master, spread evenly."""
    digest = hashlib.blake2b(f"{member}\0{service_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(members: list[str], service_id: str) -> str | None:
    """The member that checks `service_id`: the highest score (none without members)."""
    return max(members, key=lambda member: score(member, service_id), default=None)


class Membership:
    """This master's membership of an etcd-backed registry, and its share of the checks."""

    def __init__(
        self, store: EtcdStore, *, ttl: float = DEFAULT_MEMBER_TTL, address: str = ""
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._address = address
        self._members: list[str] = []
        self._listeners: list[OwnershipListener] = []
        self._lease = 0
        self._renewed = 0.0  # monotonic time of the last good keepalive
        self._task: asyncio.Task[None] | None = None
        self._in = False  # our key is (as far as we know) there

    # --- the share -------------------------------------------------------------------------

    def owns(self, service_id: str) -> bool:
        if not self._in:
            return False
        return owner(self._members, service_id) == self.name

    def add_listener(self, listener: OwnershipListener) -> None:
        self._listeners.append(listener)

    def _on_members(self, members: dict[str, int]) -> None:
        names = sorted(members)
        member = self.name in members  # our key lapsed while we could not renew it: out
        if names == self._members and member == self._in:
            return
        joined = sorted(set(names) - set(self._members))
        left = sorted(set(self._members) - set(names))
        self._members = names
        if joined or left:
            log.info("members_changed", members=len(names), joined=joined, left=left, me=self.name)
        self._in = member
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def describe(self) -> dict[str, object]:
        return {"member": self.name, "members": len(self._members), "checking": self._in}

    # --- the lease ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.store.add_member_listener(self._on_members)
        try:
            await self._join()
        except EtcdError as exc:
            log.warning("member_join_failed", reason=str(exc))  # the loop keeps trying
        self._task = asyncio.create_task(self._keep_alive(), name="member-keepalive")

    async def _join(self) -> None:
        lease, granted = await self.store.client.lease_grant(max(2, round(self.ttl)))
        value = encode({"address": self._address, "pid": os.getpid(), "ttl": granted})
        await self.store.put_member(self.name, value, lease)
        self._lease, self._renewed = lease, time.monotonic()
        log.info("member_joined", member=self.name, ttl=granted)
        if not self._in and self.name in self._members:
            # Back after a lapse with the same name: the member list looks unchanged, so
            # no watch event would say we are in again.
            self._in = True
            self._notify()

    async def _keep_alive(self) -> None:
        """Renew the lease a third of a TTL apart; rejoin if it is gone; stop checking
        once it could not be renewed for a whole TTL (the others have our share)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if self._lease == 0 or await self.store.client.lease_keepalive(self._lease) == 0:
                    await self._join()
                    continue
                self._renewed = time.monotonic()
            except EtcdError as exc:
                self.store.restart_watch()
                if self._in and time.monotonic() - self._renewed > self.ttl:
                    self._in = False
                    self._lease = 0
                    log.warning("member_lapsed", member=self.name, reason=str(exc))
                    self._notify()

    async def stop(self) -> None:
        """Leave at once (revoke the lease), so the others take our share now, not in a TTL."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._in = False
        if self._lease:
            try:
                async with asyncio.timeout(1.0):
                    await self.store.client.lease_revoke(self._lease)
            except (EtcdError, TimeoutError) as exc:
                log.warning("member_leave_failed", reason=str(exc))
            self._lease = 0
