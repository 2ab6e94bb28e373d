"""One capped reader for every body or pipe we read from someone else.

A check's answer, a service's OpenAPI document, a child's output: each is read up to a
limit and no further, so an endless or huge answer costs at most the limit.
"""

from __future__ import annotations

from typing import Final, Protocol

CHUNK: Final = 64 * 1024


class Readable(Protocol):
    """aiohttp's and asyncio's StreamReader alike."""

    async def read(self, n: int = -1) -> bytes: ...


async def read_capped(stream: Readable, limit: int, *, drain: bool = False) -> tuple[bytes, bool]:
    """Up to `limit` bytes, and whether there was more.

    Without `drain` the rest is never read (leaving an HTTP body unread drops its
    connection, so it is never transferred). With `drain` the rest is read and thrown away:
    a child writing to a pipe must never block on it because we stopped reading.
    """
    kept = bytearray()
    while len(kept) <= limit:  # one byte past the limit tells that there is more
        chunk = await stream.read(min(CHUNK, limit + 1 - len(kept)))
        if not chunk:
            return bytes(kept), False
        kept += chunk
    if drain:
        while await stream.read(CHUNK):
            pass
    return bytes(kept[:limit]), True
