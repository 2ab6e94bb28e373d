"""What the sidecar wants the master to hold for its service, and whether that changed.

The desired state is the configuration in force (its registration) and the service's
OpenAPI document as canonical bytes with their sha256: the one encoding both sides hash,
and the bytes the master stores and /openapi.json serves. A dirty flag says it changed
since the sync loop last looked; edits, SIGHUP and a new document set it, the loop clears
it as it starts a round (Consul's `agent/local/state.go` holds the same two things).

Nothing here talks to the network: the loop decides when to send, this module what.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec

from master.model import Document, Registration, canonical_document, registration_body
from sidecar.config import Config, MasterLink, default_instance


class Desired:
    """`instance` names this sidecar as the holder of the id, fixed for its lifetime (a
    reload never changes who holds it). `retired` holds the ids a reload moved away from,
    with the master link they were registered through, until the loop has removed them."""

    def __init__(self, config: Config, instance: str | None = None) -> None:
        self.config = config
        self.instance = instance or default_instance(config.sidecar.listen_port)
        self.registration: Registration = config.registration(self.instance)
        self.document: Document | None = None
        self.retired: list[tuple[str, MasterLink]] = []
        self.draining = False  # on its way out: every PUT from now on says so
        self._dirty = asyncio.Event()

    # --- changes -------------------------------------------------------------------------

    def update_config(self, config: Config) -> None:
        """Swap in a new configuration whole; the loop sends it at once. An edited
        `service.id` retires the old one: the loop deregisters it."""
        old_id, new_id = self.config.service.id, config.service.id
        if new_id != old_id:
            kept = [(i, link) for i, link in self.retired if i not in (old_id, new_id)]
            self.retired = [*kept, (old_id, self.config.master)]
        self.config = config
        self.registration = self._registration()
        if config.service.openapi is None:
            self.document = None  # no longer described: the master drops its copy too
        self.mark_dirty()

    def start_draining(self) -> None:
        """From now on the registration says `draining`, whatever a reload brings."""
        self.draining = True
        self.registration = self._registration()
        self.mark_dirty()

    def _registration(self) -> Registration:
        registration = self.config.registration(self.instance)
        if self.draining:
            registration = msgspec.structs.replace(registration, draining=True)
        return registration

    def retire_done(self, service_id: str) -> None:
        self.retired = [(i, link) for i, link in self.retired if i != service_id]

    def set_document(self, document: dict[str, Any]) -> bool:
        """Hold `document` (parsed JSON) as canonical bytes; True, and dirty, if it is not
        the one held already (key order aside)."""
        new = Document.of(canonical_document(document))
        if self.document is not None and self.document.sha256 == new.sha256:
            return False
        self.document = new
        self.mark_dirty()
        return True

    def mark_dirty(self) -> None:
        self._dirty.set()

    def take_dirty(self) -> bool:
        """Whether it changed since the last call; the flag is cleared."""
        dirty = self._dirty.is_set()
        self._dirty.clear()
        return dirty

    async def wait_dirty(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a change; True if one came."""
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()
        return self._dirty.is_set()

    # --- what to send ----------------------------------------------------------------------

    def body(self, master_sha256: str | None) -> bytes:
        """The PUT body that brings a master holding the document `master_sha256` (None:
        none) to this state: the registration, and the document only where it lacks it."""
        if self.agrees(master_sha256):
            return registration_body(self.registration)  # no `openapi` key: keep it
        if self.document is None:
            return registration_body(self.registration, None)  # remove the stored one
        return registration_body(self.registration, self.document.body)

    def agrees(self, master_sha256: str | None) -> bool:
        """Whether a master holding the document `master_sha256` needs no word about it:
        it holds ours, or none when we have none to give. Before the first fetch there is
        nothing to say either way."""
        if self.config.service.openapi is None:
            return master_sha256 is None
        return self.document is None or self.document.sha256 == master_sha256
