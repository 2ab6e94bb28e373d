"""The one small interface every registry store implements.

A store keeps records as JSON-able dicts keyed by service id. It knows nothing of HTTP or
of the registry's indexes; the registry owns the in-memory view and calls the store to make
each change durable. `put` and `delete` return only once the change is committed.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any


class StoreError(Exception):
    """The store could not do what was asked (disk full, database locked, peer gone)."""


class Store(abc.ABC):
    """A durable map from service id to record body."""

    @abc.abstractmethod
    async def open(self) -> dict[str, dict[str, Any]]:
        """Open (creating if needed) and return every stored record by id."""

    @abc.abstractmethod
    async def put(self, record_id: str, body: Mapping[str, Any]) -> None:
        """Store `body` under `record_id`; durable when this returns."""

    @abc.abstractmethod
    async def delete(self, record_id: str) -> None:
        """Remove `record_id` (a no-op if absent); durable when this returns."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the store."""

    def describe(self) -> str:
        """A short text for logs and /healthz, e.g. `sqlite:///data/registry.db`."""
        return type(self).__name__
