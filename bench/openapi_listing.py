"""How long `?openapi=true` holds the master's loop: 30 documents of 7 MiB, listed once
while another process asks /healthz every 5 ms. Run by hand:

    bench/.venv/bin/python -m bench.openapi_listing

It prints the listing's time and the /healthz latencies before and during it (the loop
is shared: a long pause shows as a slow /healthz).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import BIN

DOCUMENTS = 30
PATHS_PER_DOCUMENT = 20_000  # about 7 MiB of JSON
PINGER = """
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
conn, seen, end = http.client.HTTPConnection("127.0.0.1", port), [], time.time() + seconds
while time.time() < end:
    started = time.perf_counter()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    seen.append((time.time(), time.perf_counter() - started))
    time.sleep(0.005)
print(json.dumps(seen))
"""


def document(i: int) -> dict[str, object]:
    operation = {"get": {"summary": "y" * 200, "responses": {"200": {"description": "z" * 100}}}}
    paths = {f"/p{i}-{j}": operation for j in range(PATHS_PER_DOCUMENT)}
    return {"openapi": "3.0.3", "info": {"title": f"s{i}", "version": "1"}, "paths": paths}


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = 19578
        argv = [str(BIN / "picoapi-master"), "--listen", f"127.0.0.1:{port}",
                "--log-format", "json", "--store", f"sqlite:///{tmp}/r.db",
                "--max-document-bytes", str(512 << 20)]  # fmt: skip
        with open(Path(tmp) / "master.log", "wb") as log:
            master = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
        try:
            await _measure(f"http://127.0.0.1:{port}", port)
        finally:
            master.terminate()
            await master.wait()


async def _measure(url: str, port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url + "/healthz"):
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        size = 0
        for i in range(DOCUMENTS):
            body = json.dumps({"name": "big", "address": "127.0.0.1", "port": 9000 + i,
                               "openapi": document(i)}).encode()  # fmt: skip
            size = len(body)
            headers = {"Content-Type": "application/json"}
            async with session.put(f"{url}/v1/services/big-{i}", data=body, headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"PUT big-{i}: {r.status} {await r.text()}")
        pinger = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PINGER, str(port), "3", stdout=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(0.8)
        started_at, started = time.time(), time.perf_counter()
        received = 0
        async with session.get(url + "/v1/services?openapi=true") as answer:
            async for chunk in answer.content.iter_chunked(1 << 20):
                received += len(chunk)
        took = time.perf_counter() - started
        out, _ = await pinger.communicate()
    seen = json.loads(out)
    before = [s for at, s in seen if at < started_at]
    during = [s for at, s in seen if started_at <= at <= started_at + took + 0.05]
    print("| documents | listing | took | /healthz before, worst | during, worst | during, p50 |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {DOCUMENTS} of {size / 2**20:.1f} MiB | {received / 2**20:.0f} MiB | {took:.2f} s | "
        f"{max(before) * 1000:.0f} ms | {max(during, default=0) * 1000:.0f} ms | "
        f"{sorted(during)[len(during) // 2] * 1000 if during else 0:.1f} ms |"
    )


if __name__ == "__main__":
    asyncio.run(main())
