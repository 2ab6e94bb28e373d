"""Sidecar YAML files and following a service at the master with blocking queries."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp


def sidecar_yaml(
    *,
    service_id: str,
    service_port: int,
    master_url: str,
    listen_port: int,
    tags: list[str],
    interval: str = "10s",
    timeout: str = "2s",
    resync: str = "30s",
) -> str:
    return f"""\
service:
  name: bench-node
  id: {service_id}
  address: 127.0.0.1
  port: {service_port}
  tags: [{", ".join(tags)}]
  meta: {{team: bench}}
  openapi: /openapi.json
check:
  http: /healthz
  interval: {interval}
  timeout: {timeout}
  deregister_after: 0
master:
  url: {master_url}
sidecar:
  listen: 127.0.0.1:{listen_port}
  advertise: 127.0.0.1:{listen_port}
  resync: {resync}
"""


def write_atomically(path: Path, text: str) -> None:
    """As an editor or a ConfigMap update does: a new file renamed over the old one."""
    scratch = path.with_suffix(".new")
    scratch.write_text(text)
    os.replace(scratch, path)


async def follow(
    session: aiohttp.ClientSession,
    master_url: str,
    service_id: str,
    until: Callable[[dict[str, Any] | None], bool],
    timeout: float,
) -> tuple[dict[str, Any] | None, float]:
    """Blocking queries on one service until `until(record)`; returns it and when (perf)."""
    deadline = time.perf_counter() + timeout
    index = 0
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise RuntimeError(f"{service_id}: condition not met within {timeout:g}s")
        wait = max(1, min(int(left) + 1, 30))
        url = f"{master_url}/v1/services/{service_id}?index={index}&wait={wait}s"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=wait + 5)) as answer:
            record = await answer.json() if answer.status == 200 else None
            seen = time.perf_counter()
            index = int(answer.headers.get("X-Picoapi-Index", "0"))
        if until(record):
            return record, seen
