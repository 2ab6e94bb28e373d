"""`make demo`: a master, two services that know nothing of us, and a sidecar beside each.

Everything runs on loopback from this checkout, offline: the master on its embedded SQLite
store, `python3 -m http.server` over a static folder, and a Node.js service (where Node is
installed). Ctrl-C stops the sidecars first (they deregister), then the services and the
master.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO = ROOT / "configs" / "demo"
MASTER = "http://127.0.0.1:9500"
LOGS = ROOT / "picoapi-data" / "demo-logs"


def start(name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
    log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
    print(f"  starting {name:<12} {' '.join(argv)}")
    return subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PICOAPI_LOG_FORMAT": "json", **env},
        start_new_session=True,
    )


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return json.load(answer)


def wait_for(url: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            get_json(url)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"demo: {url} did not answer within {seconds:g}s; logs in {LOGS}")


def table(services: list[dict[str, object]]) -> str:
    rows = [("ID", "ADDRESS", "STATUS", "TAGS", "OPENAPI")]
    for s in services:
        rows.append(
            (
                str(s["id"]),
                f"{s['address']}:{s['port']}",
                str(s["status"]),
                ",".join(s["tags"]),  # type: ignore[arg-type]
                "yes" if s["openapi_sha256"] else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def stop(groups: list[list[subprocess.Popen[bytes]]]) -> None:
    """SIGTERM each group in turn, waiting for it before the next, so sidecars go first."""
    for group in groups:
        for proc in group:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in group:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    print("PicoAPI demo — logs in", LOGS.relative_to(ROOT))
    masters: list[subprocess.Popen[bytes]] = []
    services: list[subprocess.Popen[bytes]] = []
    sidecars: list[subprocess.Popen[bytes]] = []
    try:
        masters.append(start("master", [str(BIN / "picoapi-master"), "--listen", "127.0.0.1:9500"]))
        site = [
            "-m",
            "http.server",
            "8081",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(DEMO / "site"),
        ]
        services.append(start("static-site", [sys.executable, *site]))
        configs = [DEMO / "static-site.yaml"]
        node = shutil.which("node")
        if node:
            server = str(ROOT / "tests" / "service" / "server.js")
            services.append(start("node-api", [node, server], PORT="8082"))
            configs.append(DEMO / "node-api.yaml")
        else:
            print("  (no Node.js here: the second service is left out)")
        wait_for(f"{MASTER}/healthz")
        for config in configs:
            argv = [str(BIN / "picoapi-sidecar"), "run", str(config)]
            sidecars.append(start(f"sidecar-{config.stem}", argv))
        listing = wait_for_passing(len(configs))
        print(f"\nDashboard:  {MASTER}/")
        print(f"API:        {MASTER}/v1/services   (description: {MASTER}/openapi.json)")
        print(f"Try:        edit the tags in {configs[0].relative_to(ROOT)}; watch the dashboard")
        print("\nRegistered:\n" + table(listing))
        print("\nCtrl-C stops everything (the sidecars deregister first).")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("\nstopping…")
    finally:
        stop([sidecars, services, masters])
    print("stopped; the registry is kept in picoapi-data/registry.db")
    return 0


def wait_for_passing(count: int, seconds: float = 20.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + seconds
    listing: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        listing = get_json(f"{MASTER}/v1/services")["services"]  # type: ignore[index]
        if len(listing) == count and all(s["status"] == "passing" for s in listing):
            break
        time.sleep(0.3)
    return listing


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
