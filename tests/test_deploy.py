"""deploy/, checked offline: the Kubernetes manifests against the Kubernetes schemas, the
compose file against the compose-spec schema, the systemd units with systemd-analyze, the
Dockerfile by reading it, and every sidecar file they carry with `picoapi-sidecar check`.

Schema validity says little about whether the pieces fit each other, so the tests also
follow the references: the probe ports, the mounts, the token, the grace period."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from master.config import parse_master_config
from master.model import parse_duration
from master.store.etcd import EtcdURL
from tests.conftest import BIN, ROOT
from tests.test_configs import POD_ENV, run_check, sidecar_check

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
SYSTEMD = DEPLOY / "systemd"
# 1.29: native sidecars (restartPolicy on an init container) are on by default from here.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
# Three masters on a three-member etcd: a set of its own beside the base.
K8S_ETCD = K8S / "etcd"
ETCD_MANIFESTS = sorted(
    path for path in K8S_ETCD.glob("*.yaml") if path.name != "kustomization.yaml"
)
COMPOSE_FILES = [COMPOSE / "compose.yaml", COMPOSE / "compose-etcd.yaml"]
# How long the sidecar may take to deregister and exit on SIGTERM (CONTRACT section 3).
SIDECAR_STOP_SECONDS = 5


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_objects():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} under {K8S}")


def etcd_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in ETCD_MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def etcd_object(kind: str, name: str) -> dict[str, Any]:
    for _, doc in etcd_objects():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} under {K8S_ETCD}")


def container(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in containers if c["name"] == name)


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in spec.get("env", [])}


def mount_at(pod: dict[str, Any], spec: dict[str, Any], path: str) -> tuple[dict, dict]:
    """The volume mount of `spec` holding `path`, and its volume."""
    for mount in spec["volumeMounts"]:
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return mount, volume
    raise AssertionError(f"{spec['name']}: nothing mounted at {path}")


def sidecar_env(tmp_path: Path) -> dict[str, str]:
    """What a pod, a compose project or systemd would give a sidecar: POD_*, a token file,
    and systemd's credentials folder."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "picoapi-token").write_text("example-token\n")
    return {
        **POD_ENV,
        "PICOAPI_TOKEN_FILE": str(credentials / "picoapi-token"),
        "CREDENTIALS_DIRECTORY": str(credentials),
    }


# --- Kubernetes --------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path: Path, version: str) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [path.name for path in MANIFESTS]


def kustomize_argv(folder: Path) -> list[str]:
    """How to build `folder` here; skips the test when nothing can."""
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(folder)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(folder)]
    pytest.skip(f"neither kustomize nor kubectl is installed: {folder.name} is not built")


def test_kustomize_builds_valid_objects() -> None:
    """The base as `kubectl apply -k` sees it, labels and image transformer applied."""
    argv = kustomize_argv(K8S)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]
    assert sorted(doc["kind"] for doc in docs) == sorted(doc["kind"] for _, doc in k8s_objects())
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "picoapi"


def test_master_statefulset_keeps_sqlite_on_a_volume() -> None:
    statefulset = k8s_object("StatefulSet", "picoapi-master")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1  # SQLite has one writer
    pod = spec["template"]["spec"]
    master = container(pod["containers"], "master")
    env = env_of(master)
    assert env["PICOAPI_STORE"] == "sqlite:////data/registry.db"
    data_mount = next(m for m in master["volumeMounts"] if m["mountPath"] == "/data")
    claims = [claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]]
    assert data_mount["name"] in claims


def test_master_probes_healthz_on_its_port() -> None:
    pod = k8s_object("StatefulSet", "picoapi-master")["spec"]["template"]["spec"]
    master = container(pod["containers"], "master")
    port_names = {port["name"]: port["containerPort"] for port in master["ports"]}
    listen_port = int(env_of(master)["PICOAPI_LISTEN"].rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe"):
        get = master[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert port_names.get(get["port"], get["port"]) == listen_port


def test_master_runs_unprivileged_on_a_read_only_root() -> None:
    pod = k8s_object("StatefulSet", "picoapi-master")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    master = container(pod["containers"], "master")
    assert master["securityContext"]["readOnlyRootFilesystem"] is True
    assert master["securityContext"]["allowPrivilegeEscalation"] is False


def test_master_token_file_comes_from_the_secret() -> None:
    pod = k8s_object("StatefulSet", "picoapi-master")["spec"]["template"]["spec"]
    master = container(pod["containers"], "master")
    token_file = env_of(master)["PICOAPI_TOKEN_FILE"]
    mount, volume = mount_at(pod, master, token_file)
    relative = token_file[len(mount["mountPath"].rstrip("/")) + 1 :]
    items = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    secret = k8s_object("Secret", volume["secret"]["secretName"])
    assert items[relative] in secret["stringData"]


def test_master_service_reaches_the_master() -> None:
    service = k8s_object("Service", "picoapi-master")
    pod_template = k8s_object("StatefulSet", "picoapi-master")["spec"]["template"]
    labels = pod_template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [port["port"] for port in service["spec"]["ports"]] == [9500]


def example_pod() -> dict[str, Any]:
    pod: dict[str, Any] = k8s_object("Deployment", "example-app")["spec"]["template"]["spec"]
    return pod


def example_sidecar_file() -> dict[str, Any]:
    """The service file the example app's sidecar runs, from its ConfigMap."""
    pod = example_pod()
    sidecar = container(pod["initContainers"], "picoapi-sidecar")
    path = sidecar["command"][-1]
    _, volume = mount_at(pod, sidecar, path)
    config_map = k8s_object("ConfigMap", volume["configMap"]["name"])
    text = config_map["data"][Path(path).name]
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_example_app_carries_a_native_sidecar() -> None:
    pod = example_pod()
    sidecar = container(pod["initContainers"], "picoapi-sidecar")
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"][:2] == ["picoapi-sidecar", "run"]
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True


def test_example_sidecar_file_is_a_directory_mount_of_the_config_map() -> None:
    """A subPath mount never sees ConfigMap updates; a directory mount gets the symlink swap
    the sidecar's reload follows."""
    pod = example_pod()
    sidecar = container(pod["initContainers"], "picoapi-sidecar")
    mount, volume = mount_at(pod, sidecar, sidecar["command"][-1])
    assert "subPath" not in mount
    assert "configMap" in volume


def test_example_sidecar_reads_pod_ip_and_name_from_the_downward_api() -> None:
    sidecar = container(example_pod()["initContainers"], "picoapi-sidecar")
    env = env_of(sidecar)
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_example_app_is_ready_when_the_sidecar_check_passes() -> None:
    pod = example_pod()
    sidecar = container(pod["initContainers"], "picoapi-sidecar")
    app = container(pod["containers"], "app")
    listen_port = int(str(example_sidecar_file()["sidecar"]["listen"]).rsplit(":", 1)[1])
    assert [port["containerPort"] for port in sidecar["ports"]] == [listen_port]
    readiness = app["readinessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == ("/health", listen_port)


def test_example_app_drains_before_it_stops_within_the_grace_period() -> None:
    pod = example_pod()
    app = container(pod["containers"], "app")
    script = app["lifecycle"]["preStop"]["exec"]["command"][-1]
    words = shlex.split(script.replace(";", " ; "))
    assert "http://127.0.0.1:9501/drain" in words
    assert words[words.index("-X") + 1] == "POST"
    max_time = int(words[words.index("--max-time") + 1])
    sleep = int(words[words.index("sleep") + 1]) if "sleep" in words else 0
    # curl waits for the whole drain: the grace of reporting `draining`, then the DELETE.
    grace = parse_duration(example_sidecar_file()["sidecar"].get("drain_grace", "0s"))
    assert max_time >= grace + SIDECAR_STOP_SECONDS
    # preStop, then the app's own stop, then the sidecar's deregistration on SIGTERM.
    app_stop = 10
    assert pod["terminationGracePeriodSeconds"] >= max_time + sleep + app_stop + (
        SIDECAR_STOP_SECONDS
    )


def test_example_sidecar_token_is_one_the_master_accepts() -> None:
    pod = example_pod()
    sidecar = container(pod["initContainers"], "picoapi-sidecar")
    token_file = str(example_sidecar_file()["master"]["token_file"])
    default = re.fullmatch(r"\$\{[A-Z_]+:-(?P<path>[^}]+)\}", token_file)
    path = default["path"] if default else token_file
    mount, volume = mount_at(pod, sidecar, path)
    items = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    key = items[path[len(mount["mountPath"].rstrip("/")) + 1 :]]
    secret = k8s_object("Secret", volume["secret"]["secretName"])
    master_tokens = [
        line.strip()
        for line in secret["stringData"]["tokens"].splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert secret["stringData"][key].strip() in master_tokens


def test_example_sidecar_registers_with_the_master_service() -> None:
    url = example_sidecar_file()["master"]["url"]
    service = k8s_object("Service", "picoapi-master")
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


# --- every sidecar file the deployments carry ----------------------------------------------


def embedded_sidecar_files() -> Iterator[tuple[str, str]]:
    for path, doc in [*k8s_objects(), *etcd_objects()]:
        if doc["kind"] == "ConfigMap":
            for key, text in doc.get("data", {}).items():
                if key.endswith((".yaml", ".yml")):
                    yield f"{path.name}:{key}", text
    yield "compose/app-sidecar.yaml", (COMPOSE / "app-sidecar.yaml").read_text()
    for name, config in load(COMPOSE / "compose-etcd.yaml").get("configs", {}).items():
        if "content" in config:  # every inline config of this project is a sidecar's file
            yield f"compose/compose-etcd.yaml:configs.{name}", config["content"]
    yield "systemd/nginx.yaml", (SYSTEMD / "nginx.yaml").read_text()


EMBEDDED = list(embedded_sidecar_files())


@pytest.mark.parametrize(("label", "text"), EMBEDDED, ids=[label for label, _ in EMBEDDED])
def test_embedded_sidecar_file_passes_check(label: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(text)
    registration = sidecar_check(path, sidecar_env(tmp_path))
    if label.startswith("example-app"):
        assert registration["id"] == POD_ENV["POD_NAME"]
        assert registration["address"] == POD_ENV["POD_IP"]
        assert registration["check"]["url"] == f"http://{POD_ENV['POD_IP']}:9501/health"


def test_embedded_kubernetes_file_needs_its_token(tmp_path: Path) -> None:
    """Without the mounted Secret the sidecar refuses to start, rather than register
    without a token and be turned away."""
    text = dict(EMBEDDED)["example-app-configmap.yaml:service.yaml"]
    path = tmp_path / "service.yaml"
    path.write_text(text)
    env = {key: value for key, value in sidecar_env(tmp_path).items() if "TOKEN" not in key}
    proc = run_check(path, env)
    assert proc.returncode == 2
    assert "master.token_file" in proc.stderr


# --- Docker Compose ----------------------------------------------------------------------

SCHEMA = COMPOSE / "compose-spec.schema.json"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_compose_spec_schema(path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(load(path))
    ]
    assert errors == []


def test_compose_schema_is_the_recorded_one() -> None:
    """deploy/README.md says where the vendored schema came from, by its hash."""
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert digest in (DEPLOY / "README.md").read_text()


def test_compose_sidecar_shares_the_app_network_namespace() -> None:
    services = load(COMPOSE / "compose.yaml")["services"]
    sidecar = services["app-sidecar"]
    mode, _, target = sidecar["network_mode"].partition(":")
    assert (mode, target) == ("service", "app")
    # A container in another's namespace cannot publish ports: the app publishes the
    # sidecar's port for it.
    assert "ports" not in sidecar
    assert any(port.endswith(":9501") for port in services["app"]["ports"])


def test_compose_sidecar_runs_the_mounted_file() -> None:
    sidecar = load(COMPOSE / "compose.yaml")["services"]["app-sidecar"]
    path = sidecar["command"][-1]
    for volume in sidecar["volumes"]:
        source, target, *_ = volume.split(":")
        if path.startswith(target.rstrip("/") + "/"):
            assert (COMPOSE / source / path[len(target.rstrip("/")) + 1 :]).is_file()
            return
    raise AssertionError(f"{path} is not in a mounted folder")


def test_compose_sidecar_file_names_the_compose_services() -> None:
    services = load(COMPOSE / "compose.yaml")["services"]
    data = load(COMPOSE / "app-sidecar.yaml")
    assert data["master"]["url"] == "http://master:9500"
    assert "master" in services
    assert data["service"]["address"] == "app"
    assert data["sidecar"]["advertise"] == "app:9501"


# --- several masters on etcd: kubernetes/etcd/ and compose/compose-etcd.yaml -------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", ETCD_MANIFESTS, ids=lambda p: f"etcd/{p.name}")
def test_etcd_manifest_matches_kubernetes_schema(path: Path, version: str) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_etcd_kustomization_lists_every_manifest() -> None:
    kustomization = load(K8S_ETCD / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [path.name for path in ETCD_MANIFESTS]
    assert kustomization["images"] == load(K8S / "kustomization.yaml")["images"]


def test_etcd_kustomize_builds_valid_objects() -> None:
    argv = kustomize_argv(K8S_ETCD)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]
    assert sorted(doc["kind"] for doc in docs) == sorted(doc["kind"] for _, doc in etcd_objects())
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "picoapi"


@pytest.mark.parametrize("name", ["secret.yaml", "master-service.yaml"])
def test_etcd_set_carries_the_base_secret_and_service(name: str) -> None:
    """The same objects as the base's: sidecars need no change to move between the two."""
    ours = [doc for doc in yaml.safe_load_all((K8S_ETCD / name).read_text()) if doc]
    base = [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    assert ours == base


def etcd_statefulset() -> dict[str, Any]:
    return etcd_object("StatefulSet", "etcd")


def etcd_flags(pod: dict[str, Any]) -> dict[str, str]:
    command = container(pod["containers"], "etcd")["command"]
    assert command[0] == "etcd"
    return dict(arg.removeprefix("--").split("=", 1) for arg in command[1:])


def etcd_member_names() -> list[str]:
    statefulset = etcd_statefulset()
    return [
        f"{statefulset['metadata']['name']}-{n}" for n in range(statefulset["spec"]["replicas"])
    ]


def test_etcd_members_find_each_other_through_the_headless_service() -> None:
    statefulset = etcd_statefulset()
    spec = statefulset["spec"]
    service = etcd_object("Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    # The names must resolve before a member is ready, or the first election never comes.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    etcd = container(pod["containers"], "etcd")
    ports = {port["name"]: port["containerPort"] for port in etcd["ports"]}
    assert {p["name"]: ports[p["targetPort"]] for p in service["spec"]["ports"]} == {
        "client": 2379,
        "peer": 2380,
    }
    flags = etcd_flags(pod)
    domain = service["metadata"]["name"]
    assert flags["name"] == "$(POD_NAME)"
    assert env_of(etcd)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert flags["initial-cluster"] == ",".join(
        f"{name}=http://{name}.{domain}:{ports['peer']}" for name in etcd_member_names()
    )
    assert flags["initial-advertise-peer-urls"] == f"http://$(POD_NAME).{domain}:{ports['peer']}"
    assert flags["advertise-client-urls"] == f"http://$(POD_NAME).{domain}:{ports['client']}"
    assert flags["listen-client-urls"].endswith(f":{ports['client']}")
    assert flags["listen-peer-urls"].endswith(f":{ports['peer']}")


def test_etcd_keeps_its_data_on_a_claim_and_probes_its_metrics_port() -> None:
    spec = etcd_statefulset()["spec"]
    pod = spec["template"]["spec"]
    etcd = container(pod["containers"], "etcd")
    data_dir = etcd_flags(pod)["data-dir"]
    mount, _ = next(
        (m, None)
        for m in etcd["volumeMounts"]
        if data_dir.startswith(m["mountPath"].rstrip("/") + "/")
    )
    assert mount["name"] in [claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]]
    metrics = etcd_flags(pod)["listen-metrics-urls"]
    ports = {port["name"]: port["containerPort"] for port in etcd["ports"]}
    assert metrics.endswith(f":{ports['metrics']}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = etcd[probe]["httpGet"]
        assert get["port"] == "metrics" and get["path"].startswith("/health"), probe
    # Alive without quorum (serializable), so losing quorum restarts no member.
    assert "serializable=true" in etcd["livenessProbe"]["httpGet"]["path"]


def etcd_master_pod() -> dict[str, Any]:
    pod: dict[str, Any] = etcd_object("Deployment", "picoapi-master")["spec"]["template"]["spec"]
    return pod


def test_etcd_masters_are_three_on_every_member(tmp_path: Path) -> None:
    deployment = etcd_object("Deployment", "picoapi-master")
    assert deployment["spec"]["replicas"] == 3
    master = container(etcd_master_pod()["containers"], "master")
    env = env_of(master)
    assert env["PICOAPI_STORE"] == "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379"
    parsed = EtcdURL.parse(env["PICOAPI_STORE"])
    assert parsed.endpoints == tuple(f"http://{name}.etcd:2379" for name in etcd_member_names())
    # The master takes its whole environment (the token file as a stand-in: it is read).
    tokens = tmp_path / "tokens"
    tokens.write_text("change-me-sidecar-token\n")
    config = parse_master_config([], {**env, "PICOAPI_TOKEN_FILE": str(tokens)})
    assert config.store == env["PICOAPI_STORE"]
    assert config.member_ttl == 10.0
    assert "volumeClaimTemplates" not in deployment["spec"]  # nothing kept in the pod


def test_etcd_masters_are_ready_only_with_etcd_and_alive_without() -> None:
    master = container(etcd_master_pod()["containers"], "master")
    port_names = {port["name"]: port["containerPort"] for port in master["ports"]}
    listen_port = int(env_of(master)["PICOAPI_LISTEN"].rsplit(":", 1)[1])
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = master[probe]["httpGet"]
        assert port_names.get(get["port"], get["port"]) == listen_port
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "readinessProbe": "/healthz?ready",  # 503 while etcd is out of reach
        "livenessProbe": "/healthz",  # 200 while the master runs: no restart for etcd's sake
    }


@pytest.mark.parametrize(
    ("kind", "name", "name_of_container"),
    [("Deployment", "picoapi-master", "master"), ("StatefulSet", "etcd", "etcd")],
)
def test_etcd_set_runs_unprivileged_on_a_read_only_root(
    kind: str, name: str, name_of_container: str
) -> None:
    pod = etcd_object(kind, name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    spec = container(pod["containers"], name_of_container)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= spec["resources"]["requests"].keys()
    assert "memory" in spec["resources"]["limits"]


def test_etcd_masters_token_file_comes_from_the_secret() -> None:
    pod = etcd_master_pod()
    master = container(pod["containers"], "master")
    token_file = env_of(master)["PICOAPI_TOKEN_FILE"]
    mount, volume = mount_at(pod, master, token_file)
    relative = token_file[len(mount["mountPath"].rstrip("/")) + 1 :]
    items = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    secret = etcd_object("Secret", volume["secret"]["secretName"])
    assert items[relative] in secret["stringData"]


def test_etcd_master_service_selects_the_masters_only() -> None:
    service = etcd_object("Service", "picoapi-master")
    selector = service["spec"]["selector"].items()
    workloads = {
        (doc["kind"], doc["metadata"]["name"]): doc["spec"]["template"]["metadata"]["labels"]
        for _, doc in etcd_objects()
        if doc["kind"] in ("Deployment", "StatefulSet")
    }
    selected = [key for key, labels in workloads.items() if selector <= labels.items()]
    assert selected == [("Deployment", "picoapi-master")]
    master = container(etcd_master_pod()["containers"], "master")
    target = service["spec"]["ports"][0]["targetPort"]
    assert target in [port["name"] for port in master["ports"]]


def test_etcd_is_reached_by_the_masters_and_its_peers_only() -> None:
    policy = etcd_object("NetworkPolicy", "etcd")["spec"]
    etcd_labels = etcd_statefulset()["spec"]["template"]["metadata"]["labels"]
    master_labels = etcd_object("Deployment", "picoapi-master")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert policy["podSelector"]["matchLabels"].items() <= etcd_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    allowed: dict[str, list[dict[str, str]]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            allowed[port["port"]] = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]

    def admits(port: str, labels: dict[str, str]) -> bool:
        return any(match.items() <= labels.items() for match in allowed.get(port, []))

    assert admits("client", master_labels) and admits("client", etcd_labels)
    assert admits("peer", etcd_labels) and not admits("peer", master_labels)
    example = k8s_object("Deployment", "example-app")["spec"]["template"]["metadata"]["labels"]
    assert not admits("client", example)  # an application pod cannot write the registry


def test_etcd_disruption_budgets_cover_both_workloads() -> None:
    budgets = [doc for _, doc in etcd_objects() if doc["kind"] == "PodDisruptionBudget"]
    covered = set()
    for budget in budgets:
        assert budget["spec"]["maxUnavailable"] == 1
        match = budget["spec"]["selector"]["matchLabels"].items()
        for _, doc in etcd_objects():
            workload = doc["kind"] in ("Deployment", "StatefulSet")
            if workload and match <= doc["spec"]["template"]["metadata"]["labels"].items():
                covered.add(doc["metadata"]["name"])
    assert covered == {"picoapi-master", "etcd"}


# compose-etcd.yaml

COMPOSE_ETCD = COMPOSE / "compose-etcd.yaml"


def compose_etcd_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load(COMPOSE_ETCD)["services"]
    return services


def compose_etcd_flags(service: dict[str, Any]) -> dict[str, str]:
    """A member's flags: the shared entrypoint's and its own command's."""
    argv = [*service["entrypoint"], *service["command"]]
    assert Path(argv[0]).name == "etcd"
    return dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:])


def test_compose_etcd_members_name_each_other() -> None:
    services = compose_etcd_services()
    members = sorted(name for name in services if name.startswith("etcd-"))
    assert len(members) == 3
    volumes = load(COMPOSE_ETCD)["volumes"]
    cluster = ",".join(f"{name}=http://{name}:2380" for name in members)
    for name in members:
        flags = compose_etcd_flags(services[name])
        assert flags["name"] == name
        assert flags["initial-cluster"] == cluster
        assert flags["initial-advertise-peer-urls"] == f"http://{name}:2380"
        assert flags["advertise-client-urls"] == f"http://{name}:2379"
        # Its data on a volume of its own.
        (volume,) = (v for v in services[name]["volumes"] if v.endswith(":" + flags["data-dir"]))
        assert volume.split(":")[0] == f"{name}-data" and f"{name}-data" in volumes
        assert services[name]["read_only"] is True


def test_compose_etcd_masters_use_every_member(tmp_path: Path) -> None:
    services = compose_etcd_services()
    members = sorted(name for name in services if name.startswith("etcd-"))
    masters = sorted(name for name in services if name.startswith("master-"))
    assert len(masters) == 3
    published = set()
    for name in masters:
        master = services[name]
        env = master["environment"]
        assert EtcdURL.parse(env["PICOAPI_STORE"]).endpoints == tuple(
            f"http://{member}:2379" for member in members
        )
        config = parse_master_config([], env)
        assert config.listen_port == 9500
        assert set(master["depends_on"]) == set(members)
        (port,) = master["ports"]
        published.add(port)
        assert port.endswith(":9500")
        assert "?ready" in " ".join(master["healthcheck"]["test"])
    assert len(published) == 3  # one host port each


def test_compose_etcd_sidecar_shares_the_app_namespace_and_lists_every_master() -> None:
    services = compose_etcd_services()
    sidecar = services["app-sidecar"]
    mode, _, target = sidecar["network_mode"].partition(":")
    assert (mode, target) == ("service", "app") and target in services
    assert "ports" not in sidecar
    assert any(port.endswith(":9501") for port in services["app"]["ports"])
    # Its file is the inline config mounted where its command reads it.
    path = sidecar["command"][-1]
    (mounted,) = (c for c in sidecar["configs"] if c["target"] == path)
    data = yaml.safe_load(load(COMPOSE_ETCD)["configs"][mounted["source"]]["content"])
    masters = sorted(name for name in services if name.startswith("master-"))
    assert data["master"]["url"] == [f"http://{name}:9500" for name in masters]
    assert data["service"]["address"] == "app"
    assert data["sidecar"]["advertise"] == "app:9501"


# --- systemd -----------------------------------------------------------------------------

UNITS = [SYSTEMD / "picoapi-master.service", SYSTEMD / "picoapi-sidecar@.service"]
SANDBOX = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "KillSignal": "SIGTERM",
    "TimeoutStopSec": "10",
    "Restart": "on-failure",
}


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_is_sandboxed(path: Path) -> None:
    service = unit_settings(path)["Service"]
    wrong = {key: service.get(key) for key, value in SANDBOX.items() if service.get(key) != [value]}
    assert wrong == {}
    assert "~@privileged @resources" in service["SystemCallFilter"]


def test_master_unit_keeps_sqlite_in_its_state_directory() -> None:
    service = unit_settings(SYSTEMD / "picoapi-master.service")["Service"]
    assert service["StateDirectory"] == ["picoapi"]
    assert "PICOAPI_STORE=sqlite:////var/lib/picoapi/registry.db" in service["Environment"]
    assert service["ExecStart"] == ["/usr/local/bin/picoapi-master"]


def test_sidecar_unit_is_one_instance_per_service_file() -> None:
    service = unit_settings(SYSTEMD / "picoapi-sidecar@.service")["Service"]
    assert service["ExecStart"] == [
        "/usr/local/bin/picoapi-sidecar run /etc/picoapi/services/%i.yaml"
    ]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_sidecar_unit_hands_over_the_token_the_example_file_reads() -> None:
    service = unit_settings(SYSTEMD / "picoapi-sidecar@.service")["Service"]
    credential = service["LoadCredential"][0].split(":", 1)[0]
    token_file = load(SYSTEMD / "nginx.yaml")["master"]["token_file"]
    assert token_file == f"${{CREDENTIALS_DIRECTORY}}/{credential}"


def systemd_analyze_verify(unit: Path) -> list[str]:
    """Complaints of `systemd-analyze verify` about `unit` (it exits 0 on unknown keys and
    bad values, naming the file in its message, so the output is what counts)."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=unit.parent,
    )
    unit_name = unit.name.split("@")[0]
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if unit_name in line]
    if proc.returncode != 0 and not complaints:
        complaints = [f"exit {proc.returncode}: {proc.stderr.strip()}"]
    return complaints


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed: the units are only parsed",
)


@needs_systemd_analyze
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verifies_unit(path: Path, tmp_path: Path) -> None:
    """The units name /usr/local/bin/picoapi-*, where pip installs them system-wide; verify
    resolves ExecStart, so a copy points at this checkout's installed commands instead."""
    text = path.read_text()
    for command in ("picoapi-master", "picoapi-sidecar"):
        assert (BIN / command).is_file()
        text = text.replace(f"/usr/local/bin/{command}", str(BIN / command))
    (tmp_path / path.name).write_text(text)
    # A template cannot be verified itself; an instance can, loading the template.
    unit = tmp_path / path.name.replace("@.", "@example.")
    assert systemd_analyze_verify(unit) == []


@needs_systemd_analyze
def test_systemd_analyze_reports_a_bad_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt option is reported."""
    unit = tmp_path / "picoapi-broken.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nProtectSystem=stricter\nDynamicUsr=yes\n")
    assert len(systemd_analyze_verify(unit)) == 2


# --- Dockerfile --------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments), ...] per stage, continuation lines joined, ARG defaults
    given before the first FROM substituted."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        if instruction == "FROM":
            for name, value in args.items():
                rest = rest.replace(f"${{{name}}}", value)
            stages.append([])
        if stages:
            stages[-1].append((instruction, rest.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def test_dockerfile_builds_in_one_stage_and_ships_another() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        base = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.11[.0-9]*-slim(-[a-z]+)?", base), base
    builder = " ".join(args for instruction, args in stages[0] if instruction == "RUN")
    assert "pip wheel" in builder
    # The builder has every package the distribution is made of.
    copied = " ".join(args for instruction, args in stages[0] if instruction == "COPY")
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied.split(), pattern


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    runs = " ".join(args for instruction, args in final_stage() if instruction == "RUN")
    for tool in ("apt-get install", "apk add", "gcc", "build-essential", "make "):
        assert tool not in runs
    # Installed from the builder's wheels only, then the installers themselves removed.
    assert "--no-index" in runs
    uninstall = re.search(r"pip uninstall (?:--yes|-y) ([^&]+)", runs)
    assert uninstall is not None
    assert {"pip", "setuptools", "wheel"} <= set(uninstall.group(1).split())
    # No source tree from the build context: only what the builder made.
    for instruction, args in final_stage():
        if instruction in ("COPY", "ADD"):
            assert args.startswith("--from="), args


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    users = [args for instruction, args in final_stage() if instruction == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdecimal() and int(uid) != 0  # numeric: runAsNonRoot can verify it


def test_dockerfile_offers_both_commands() -> None:
    """No ENTRYPOINT, so `docker run IMAGE picoapi-sidecar run FILE` works as well as the
    default picoapi-master; both are console scripts of the installed distribution."""
    instructions = dict(final_stage())
    assert "ENTRYPOINT" not in instructions
    assert json.loads(instructions["CMD"]) == ["picoapi-master"]
    assert set(instructions["EXPOSE"].split()) == {"9500", "9501"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"picoapi-master", "picoapi-sidecar"} <= set(project["scripts"])
    install = next(args for instruction, args in final_stage() if "pip install" in args)
    assert project["name"] in install.split()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = re.escape(pattern.strip("/"))
        out = out.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        out = out.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        matcher = regex(pattern.removeprefix("!"))
        if any(matcher.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (DEPLOY / "dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_what_the_build_copies_and_nothing_local() -> None:
    patterns = dockerignore_patterns()
    copied = [
        source
        for instruction, args in dockerfile_stages()[0]
        if instruction == "COPY"
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), source
        assert not dockerignored(f"{source}/x.py", patterns) or not (ROOT / source).is_dir()
    for local in (".venv/bin/python", ".git/config", "picoapi-data/registry.db", "tests/x.py"):
        assert dockerignored(local, patterns), local
    assert dockerignored("master/__pycache__/api.cpython-311.pyc", patterns)


def test_root_dockerignore_is_the_deploy_one() -> None:
    root = ROOT / ".dockerignore"
    if not root.exists():
        pytest.skip(".dockerignore is not at the repository root yet (copy deploy/dockerignore)")
    assert root.read_text() == (DEPLOY / "dockerignore").read_text()
