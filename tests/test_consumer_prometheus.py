"""Debian's real Prometheus (2.42, built without consul_sd) discovering services through
`http_sd_configs` pointed at the catalog: what a user copies from the README, run.

Prometheus is started by each test on a free loopback port, with its configuration and
its TSDB in the test's tmp_path, and stopped by its pid at the end. The services are real:
a Node.js service registered by the real sidecar. The service's metrics are the sidecar's
own `/metrics` (the Node.js service serves none), which the registration says with
`meta: {metrics_path: /metrics, metrics_port: <sidecar port>}`.

Prometheus' discovery manager hands new targets to the scrape manager every 5 s whatever
the `refresh_interval` (1 s here, accepted as is), so a change takes up to ~6 s to show.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests import consumer_fixture, service_fixture
from tests.conftest import http_request, wait_until
from tests.consumer_fixture import (
    READ_TOKEN,
    Catalog,
    Sidecar,
    read_token_file,
    wait_for_status,
)
from tests.service_fixture import NodeService, unused_port

start_catalog = consumer_fixture.start_catalog
start_sidecar = consumer_fixture.start_sidecar
node_service = service_fixture.node_service

PROMETHEUS: Final = "/usr/bin/prometheus"
START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
# Discovery (refresh 1 s + the discovery manager's 5 s batching) and a first scrape.
SEEN_TIMEOUT: Final = 25.0
SCRAPE: Final = {"scrape_interval": "1s", "scrape_timeout": "1s"}
# What the README tells users to put under `relabel_configs`.
KEEP_PASSING: Final = {
    "source_labels": ["__meta_picoapi_status"],
    "regex": "passing",
    "action": "keep",
}
NAMING: Final = [
    {"source_labels": ["__meta_picoapi_service"], "target_label": "service"},
    {"source_labels": ["__meta_picoapi_tags"], "target_label": "tags"},
    {"regex": "__meta_picoapi_meta_(team)", "action": "labelmap"},
]


class Prometheus:
    """One `prometheus` process on loopback, its config and TSDB under `directory`."""

    def __init__(self, directory: Path, scrape_configs: list[dict[str, Any]]) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.config = directory / "prometheus.yml"
        # JSON is YAML.
        self.config.write_text(json.dumps({"global": SCRAPE, "scrape_configs": scrape_configs}))
        self.log_path = directory / "prometheus.log"
        self.port = unused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=debug",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=consumer_fixture.loopback_env(),
        )
        self.pid = self.proc.pid

    def wait_ready(self) -> bool:
        """True once /-/ready answers; False if it exited (its port was taken)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if http_request("GET", f"{self.url}/-/ready", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **query: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        answer = http_request("GET", url)
        assert answer.status == 200, answer
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def targets(self, job: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The job's active and dropped targets, as Prometheus' own API lists them."""
        data = self.api("targets")
        active = [t for t in data["activeTargets"] if t["scrapePool"] == job]
        dropped = [t for t in data["droppedTargets"] if t["discoveredLabels"]["job"] == job]
        return active, dropped

    def active_ids(self, job: str) -> set[str]:
        return {t["discoveredLabels"]["__meta_picoapi_id"] for t in self.targets(job)[0]}

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def metric(self, name: str) -> float:
        """A sample of Prometheus' own /metrics (no labels), 0 when absent."""
        text = http_request("GET", f"{self.url}/metrics").body.decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start Prometheus with these scrape configs; every one stopped by pid at the end."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    started: list[Prometheus] = []

    def start(scrape_configs: list[dict[str, Any]]) -> Prometheus:
        for attempt in range(3):  # a free port may be taken before Prometheus binds it
            prometheus = Prometheus(tmp_path / f"prometheus-{len(started)}", scrape_configs)
            started.append(prometheus)
            if prometheus.wait_ready():
                return prometheus
            if "address already in use" not in prometheus.log() or attempt == 2:
                raise AssertionError(f"prometheus exited at start:\n{prometheus.log()}")
        raise AssertionError("unreachable")

    yield start
    for prometheus in started:
        prometheus.stop()


def http_sd_job(
    name: str,
    catalog: Catalog,
    *,
    relabel: list[dict[str, Any]] | None = None,
    credentials_file: Path | None = None,
) -> dict[str, Any]:
    sd: dict[str, Any] = {
        "url": f"{catalog.url}/v1/prometheus/targets",
        "refresh_interval": "1s",
    }
    if credentials_file is not None:
        sd["authorization"] = {"type": "Bearer", "credentials_file": str(credentials_file)}
    return {"job_name": name, **SCRAPE, "http_sd_configs": [sd], "relabel_configs": relabel or []}


def metrics_meta(sidecar_port: int) -> dict[str, str]:
    """Where this service's metrics are: its sidecar's /metrics."""
    return {"team": "data", "metrics_path": "/metrics", "metrics_port": str(sidecar_port)}


def test_a_sidecar_registered_service_is_discovered_scraped_and_leaves(
    start_catalog: Callable[..., Catalog],
    start_sidecar: Callable[..., Sidecar],
    start_prometheus: Callable[..., Prometheus],
    node_service: NodeService,
) -> None:
    catalog = start_catalog()
    port = unused_port()
    sidecar = start_sidecar(
        node_service,
        catalog.master.url,
        name="node-metrics",
        ident="node-metrics-1",
        tags=["web", "v1"],
        meta=metrics_meta(port),
        port=port,
    )
    wait_for_status(catalog.master, {"node-metrics-1": "passing"})
    prometheus = start_prometheus(
        [http_sd_job("picoapi", catalog, relabel=[KEEP_PASSING, *NAMING])]
    )

    def up_target() -> dict[str, Any] | None:
        active, _ = prometheus.targets("picoapi")
        return next((t for t in active if t["health"] == "up"), None)

    target = wait_until(up_target, timeout=SEEN_TIMEOUT, interval=0.25, message="target up")
    discovered = target["discoveredLabels"]
    assert discovered["__address__"] == f"127.0.0.1:{port}"  # meta.metrics_port
    assert discovered["__metrics_path__"] == "/metrics"  # meta.metrics_path
    assert discovered["__scheme__"] == "http"
    assert discovered["__meta_picoapi_service"] == "node-metrics"
    assert discovered["__meta_picoapi_id"] == "node-metrics-1"
    assert discovered["__meta_picoapi_status"] == "passing"
    assert discovered["__meta_picoapi_tags"] == ",web,v1,"
    assert discovered["__meta_picoapi_port"] == str(node_service.port)
    assert discovered["__meta_picoapi_meta_team"] == "data"
    assert target["scrapeUrl"] == f"http://127.0.0.1:{port}/metrics"
    assert target["labels"] == {
        "instance": f"127.0.0.1:{port}",
        "job": "picoapi",
        "service": "node-metrics",
        "tags": ",web,v1,",
        "team": "data",
    }
    # up == 1, and what was scraped is the sidecar's own figures, under the service's name.
    [up] = wait_until(
        lambda: prometheus.query('up{service="node-metrics"}'), timeout=10, message="up"
    )
    assert up["value"][1] == "1"
    [registered] = wait_until(
        lambda: prometheus.query('picoapi_sidecar_registered{job="picoapi"}'),
        timeout=10,
        message="a sample of the scraped target",
    )
    assert registered["metric"]["service"] == "node-metrics"

    sidecar.stop()  # SIGTERM: it deregisters
    wait_until(
        lambda: not prometheus.targets("picoapi")[0],
        timeout=SEEN_TIMEOUT,
        interval=0.25,
        message="the deregistered service leaves Prometheus' targets",
    )


def test_keep_on_passing_drops_a_critical_service(
    start_catalog: Callable[..., Catalog],
    start_sidecar: Callable[..., Sidecar],
    start_prometheus: Callable[..., Prometheus],
    node_service: NodeService,
) -> None:
    catalog = start_catalog()
    healthy_port, broken_port = unused_port(), unused_port()
    start_sidecar(
        node_service,
        catalog.master.url,
        name="node-metrics",
        ident="healthy",
        meta=metrics_meta(healthy_port),
        port=healthy_port,
    )
    start_sidecar(
        node_service,
        catalog.master.url,
        name="node-metrics",
        ident="broken",
        meta=metrics_meta(broken_port),
        check_path="/no-such-path",  # 404: critical
        port=broken_port,
    )
    wait_for_status(catalog.master, {"healthy": "passing", "broken": "critical"})
    prometheus = start_prometheus(
        [
            http_sd_job("passing", catalog, relabel=[KEEP_PASSING, *NAMING]),
            http_sd_job("all", catalog, relabel=NAMING),
        ]
    )
    wait_until(
        lambda: prometheus.active_ids("all") == {"healthy", "broken"},
        timeout=SEEN_TIMEOUT,
        interval=0.25,
        message="both targets in the job without keep",
    )
    assert prometheus.active_ids("passing") == {"healthy"}
    dropped = {
        t["discoveredLabels"]["__meta_picoapi_id"]: t["discoveredLabels"]["__meta_picoapi_status"]
        for t in prometheus.targets("passing")[1]
    }
    assert dropped == {"broken": "critical"}

    # The healthy one turns critical: keep drops it too, while its metrics still answer.
    node_service.set_health(503, "down for the test")
    wait_for_status(catalog.master, {"healthy": "critical"})
    wait_until(
        lambda: not prometheus.active_ids("passing"),
        timeout=SEEN_TIMEOUT,
        interval=0.25,
        message="the service gone critical is dropped by keep",
    )
    assert prometheus.active_ids("all") == {"healthy", "broken"}
    # Back to passing: kept again.
    node_service.set_health(200, "ok")
    wait_until(
        lambda: prometheus.active_ids("passing") == {"healthy"},
        timeout=SEEN_TIMEOUT,
        interval=0.25,
        message="passing again, kept again",
    )


def test_a_read_token_works_as_a_bearer_credentials_file(
    start_catalog: Callable[..., Catalog],
    start_sidecar: Callable[..., Sidecar],
    start_prometheus: Callable[..., Prometheus],
    node_service: NodeService,
    tmp_path: Path,
) -> None:
    catalog = start_catalog("--read-token-file", str(read_token_file(tmp_path)))
    credentials = tmp_path / "prometheus-token"
    credentials.write_text(READ_TOKEN + "\n")  # a mounted Secret ends in a newline
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-a-token\n")
    port = unused_port()
    start_sidecar(
        node_service,
        catalog.master.url,
        name="node-metrics",
        ident="node-metrics-1",
        meta=metrics_meta(port),
        port=port,
    )
    wait_for_status(catalog.master, {"node-metrics-1": "passing"})
    if catalog.kind == "sidecar":
        # A sidecar reads with its own master.token, lent to its loopback callers: every
        # job finds the target, whatever credentials it sends (none are passed on).
        assert http_request("GET", f"{catalog.url}/v1/prometheus/targets").status == 200
        prometheus = start_prometheus(
            [
                http_sd_job("with-token", catalog, credentials_file=credentials),
                http_sd_job("no-token", catalog),
                http_sd_job("wrong-token", catalog, credentials_file=wrong),
            ]
        )
        jobs = ("with-token", "no-token", "wrong-token")
        wait_until(
            lambda: all(prometheus.active_ids(job) == {"node-metrics-1"} for job in jobs),
            timeout=SEEN_TIMEOUT,
            interval=0.25,
            message="the target found by every job through the sidecar",
        )
        assert prometheus.metric("prometheus_sd_http_failures_total") == 0
        return
    # The targets are read-guarded: without a token they are refused.
    assert http_request("GET", f"{catalog.url}/v1/prometheus/targets").status == 401
    prometheus = start_prometheus(
        [
            http_sd_job("with-token", catalog, credentials_file=credentials),
            http_sd_job("no-token", catalog),
            http_sd_job("wrong-token", catalog, credentials_file=wrong),
        ]
    )
    target = wait_until(
        lambda: next((t for t in prometheus.targets("with-token")[0] if t["health"] == "up"), None),
        timeout=SEEN_TIMEOUT,
        interval=0.25,
        message="the target found with the token",
    )
    assert target["discoveredLabels"]["__meta_picoapi_id"] == "node-metrics-1"
    # The other two jobs fail their refreshes: Prometheus counts and logs them.
    wait_until(
        lambda: prometheus.metric("prometheus_sd_http_failures_total") >= 2,
        timeout=10,
        message="http_sd failures counted",
    )
    log = prometheus.log_path.read_text(errors="replace")
    for job in ("no-token", "wrong-token"):
        assert any(f"config={job}" in line and "401" in line for line in log.splitlines()), (
            f"no 401 refresh failure logged for {job}:\n{log[-3000:]}"
        )
    assert "config=with-token" not in "".join(line for line in log.splitlines() if "401" in line)
    assert prometheus.targets("no-token") == ([], [])
    assert prometheus.targets("wrong-token") == ([], [])


def test_debian_prometheus_has_no_consul_sd(tmp_path: Path) -> None:
    """Why the README sends Debian's users to http_sd: consul_sd_configs is refused."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    config = tmp_path / "consul.yml"
    job = {"job_name": "consul", "consul_sd_configs": [{"server": "127.0.0.1:9500"}]}
    config.write_text(json.dumps({"scrape_configs": [job]}))
    done = subprocess.run(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{unused_port()}",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert b"field consul_sd_configs not found" in done.stderr + done.stdout
