"""`memory://`: nothing survives a restart. For tests, demos and throwaway registries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from master.store.base import Store


class MemoryStore(Store):
    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    async def open(self) -> dict[str, dict[str, Any]]:
        return {key: json.loads(value) for key, value in self._data.items()}

    async def put(self, record_id: str, body: Mapping[str, Any]) -> None:
        # Kept as text so a caller mutating its dict afterwards cannot change what is stored.
        self._data[record_id] = json.dumps(body)

    async def delete(self, record_id: str) -> None:
        self._data.pop(record_id, None)

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return "memory://"
