"""The image in pods, for real: what `make image` builds, run by podman as a platform team
would try it before adopting the sidecar.

A pod of three containers of that image (podman pod create --network none: one loopback
shared by the pod's containers, as in a Kubernetes pod, and nothing else):

    master    picoapi-master --listen 127.0.0.1:9500   (SQLite on a tmpfs at /data)
    web       python3 -m http.server 8080               (any program: the sidecar sees a port)
    sidecar   picoapi-sidecar run /etc/picoapi/web.yaml      (deploy/podman/config/web.yaml)
              /etc/picoapi: a ConfigMap-style folder mounted read-only

Every container runs as the image's user, on a read-only root. The master's API is asked
from inside the master's container (`podman exec`), never from the machine.

Then the example Deployment of deploy/kubernetes, played with `podman kube play` in a
variant made here from the real manifests (see `kube_variant` for what podman 4.3 lacks).
"""

from __future__ import annotations

import copy
import datetime
import re
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests import podman_fixture
from tests.conftest import ROOT, wait_until
from tests.podman_fixture import ConfigMapDir, Podman

picoapi_image = podman_fixture.picoapi_image  # bound, not imported: no F811 on uses
podman = podman_fixture.podman

SERVICE_FILE: Final = ROOT / "deploy" / "podman" / "config" / "web.yaml"
SERVICE_TAGS: Final = "tags: [pod, podman]"  # in SERVICE_FILE; the swap adds one
MASTER_PORT: Final = 9500  # the ports and the id SERVICE_FILE gives
SIDECAR_PORT: Final = 9501
WEB_PORT: Final = 8080
MASTER: Final = f"http://127.0.0.1:{MASTER_PORT}"
SERVICE_ID: Final = "web-in-a-pod"
IMAGE_UID: Final = "10001"
# How long the sidecar may take to deregister and exit on SIGTERM (CONTRACT section 3).
SIDECAR_STOP_SECONDS: Final = 5.0
# podman stop waits this long before SIGKILL: longer than the sidecar may take, so a slow
# stop shows as a late exit instead of a kill.
STOP_GRACE: Final = "10"
REGISTER_TIMEOUT: Final = 20.0
STATUS_TIMEOUT: Final = 15.0
ROOT_READ_ONLY: Final = ("--read-only", "--tmpfs", "/tmp")


def podman_time(text: str) -> datetime.datetime:
    """A time as podman inspect gives it (RFC 3339, nanoseconds): to microseconds."""
    match = re.fullmatch(r"(.+T[0-9:]+)(?:\.([0-9]+))?(Z|[+-][0-9:]+)", text)
    assert match, text
    whole, fraction, zone = match.groups()
    micro = (fraction or "").ljust(6, "0")[:6]
    return datetime.datetime.fromisoformat(f"{whole}.{micro}{zone.replace('Z', '+00:00')}")


def service_yaml(tags: list[str]) -> str:
    """deploy/podman/config/web.yaml (what deploy/README.md runs), with these tags."""
    text = SERVICE_FILE.read_text()
    assert text.count(SERVICE_TAGS) == 1, f"{SERVICE_FILE} no longer says {SERVICE_TAGS}"
    return text.replace(SERVICE_TAGS, f"tags: [{', '.join(tags)}]")


class Pod:
    """The master, the service and its sidecar in one pod."""

    def __init__(self, podman: Podman, image: str, config: Path) -> None:
        self.podman = podman
        self.config = ConfigMapDir(config, {"web.yaml": service_yaml(["pod", "podman"])})
        self.name = podman.pod("pod")
        self.master = podman.run(
            "master",
            image,
            *("picoapi-master", "--listen", f"127.0.0.1:{MASTER_PORT}", "--log-format", "json"),
            pod=self.name,
            options=(*ROOT_READ_ONLY, "--tmpfs", "/data:U"),  # U: owned by the image's user
        )
        self.web = podman.run(
            "web",
            image,
            *("python3", "-m", "http.server", str(WEB_PORT), "--bind", "127.0.0.1"),
            pod=self.name,
            # --init: python3 as PID 1 would ignore SIGTERM (it sets no handler); the
            # daemons handle it themselves.
            options=(*ROOT_READ_ONLY, "--init"),
        )
        self.sidecar = podman.run(
            "sidecar",
            image,
            *("picoapi-sidecar", "--log-format", "json", "run", "/etc/picoapi/web.yaml"),
            pod=self.name,
            options=(*ROOT_READ_ONLY, "--volume", f"{config}:/etc/picoapi:ro"),
        )

    def wait_master(self) -> None:
        """Until the master answers (a second or two for Python to start)."""

        def answers() -> bool:
            return self.podman.http(self.master, f"{MASTER}/healthz")[0] == 200

        try:
            wait_until(answers, REGISTER_TIMEOUT, 0.3, "the master's /healthz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def record(self) -> dict[str, Any] | None:
        status, body = self.podman.http(self.master, f"{MASTER}/v1/services/{SERVICE_ID}")
        if status == 404:
            return None
        assert status == 200, (status, body)
        assert isinstance(body, dict)
        return body

    def wait_status(self, status: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            record = self.record()
            return record if record and record["status"] == status else None

        try:
            found: dict[str, Any] = wait_until(reached, timeout, 0.3, f"{SERVICE_ID} {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        return found

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}:\n{self.podman.logs(name)}" for name in (self.master, self.sidecar)
        )


@pytest.fixture
def pod(podman: Podman, picoapi_image: str, tmp_path: Path) -> Pod:
    started = Pod(podman, picoapi_image, tmp_path / "config")
    started.wait_master()
    return started


def test_a_pod_registers_through_its_loopback_and_follows_a_config_map_swap(pod: Pod) -> None:
    record = pod.wait_status("passing", REGISTER_TIMEOUT)
    assert (record["address"], record["port"]) == ("127.0.0.1", WEB_PORT)
    assert record["tags"] == ["pod", "podman"]
    assert record["check"]["url"] == f"http://127.0.0.1:{SIDECAR_PORT}/health"
    # The image's user, not root, and a read-only mount it cannot change.
    assert pod.podman("exec", pod.sidecar, "id", "-u").stdout.strip() == IMAGE_UID
    touch = pod.podman("exec", pod.sidecar, "touch", "/etc/picoapi/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr

    pod.config.update({"web.yaml": service_yaml(["pod", "podman", "swapped"])})

    def swapped() -> dict[str, Any] | None:
        record = pod.record()
        return record if record and "swapped" in record["tags"] else None

    record = wait_until(swapped, STATUS_TIMEOUT, 0.3, "the swapped tags at the master")
    assert record["tags"] == ["pod", "podman", "swapped"]
    assert record["status"] == "passing"


def test_a_pod_turns_critical_without_its_service_and_deregisters_on_podman_stop(
    pod: Pod,
) -> None:
    pod.wait_status("passing", REGISTER_TIMEOUT)
    pod.podman("stop", "--time", STOP_GRACE, pod.web)
    pod.wait_status("critical")
    pod.podman("start", pod.web)
    pod.wait_status("passing")

    asked = datetime.datetime.now(datetime.UTC)
    pod.podman("stop", "--time", STOP_GRACE, pod.sidecar)  # SIGTERM, the image's StopSignal
    state = pod.podman.inspect(pod.sidecar)["State"]
    finished = podman_time(state["FinishedAt"])
    assert state["ExitCode"] == 0, pod.logs()
    assert (finished - asked).total_seconds() < SIDECAR_STOP_SECONDS, pod.logs()
    # It deregistered before it exited: the record is gone at the first look.
    assert pod.record() is None, pod.logs()


# --- podman kube play of deploy/kubernetes --------------------------------------------------

K8S: Final = ROOT / "deploy" / "kubernetes"
# Chosen here; they exist only inside the two pods' namespaces, on the link the test makes.
KUBE_MASTER_IP: Final = "10.231.81.1"
KUBE_POD_IP: Final = "10.231.81.2"
KUBE_PREFIX: Final = 24
KUBE_TIMEOUT: Final = 30.0  # the ConfigMap's check interval is 10 s


def k8s_doc(file: str) -> dict[str, Any]:
    doc = yaml.safe_load((K8S / file).read_text())
    assert isinstance(doc, dict)
    return doc


def kube_variant(suffix: str, image: str, hosts: Path) -> list[dict[str, Any]]:
    """deploy/kubernetes's master and example app as podman 4.3 can play them.

    Changed from the manifests, each for a reason podman 4.3.1 gives (the manifests stay
    right for Kubernetes):
    - every name gets `suffix`, so runs never collide and everything is removed by name;
    - the StatefulSet becomes its pod template as a Pod and its claim template a PVC:
      `podman kube play` plays Pods, Deployments, PVCs, ConfigMaps and Secrets only;
    - the Secret is delivered as a ConfigMap of the same keys: a secret volume without
      `optional` makes podman panic (nil pointer in kube.VolumeFromSecret), and it writes
      only `data`, still base64-encoded, ignoring `stringData` and `items`;
    - the native sidecar (an init container with restartPolicy: Always) becomes the first
      ordinary container: podman runs init containers to completion before the others
      (the pod would never start) and refuses probes on them;
    - `ports` go: podman publishes every containerPort on the machine, which a pod on
      --network none cannot ("PortMappings can only be used with Bridge or slirp4netns");
    - livenessProbes go: podman turns one into `curl -f http://localhost:PORT/...` on a
      systemd timer; the image has no curl, a named port becomes 0, and nothing runs timers
      here (startupProbe, readinessProbe and the preStop hook podman ignores: they stay);
    - POD_IP is a value: podman has no `status.podIP` ("fieldPath status.podIP is either
      not valid or not supported");
    - the Service's name comes from a hosts file mounted at /etc/hosts (the cluster DNS's
      part): podman drops `hostAliases` for a pod on --network none;
    - each emptyDir is named after its pod: podman makes an emptyDir a volume named after
      the pod's volume (`tmp`), shared by every pod that names one so;
    - one replica: the POD_IP value would be every replica's;
    - the images are the local build; nginx (not pullable here) is stood in for by the
      image's python3 serving port 80, as root as nginx's image does.
    """
    secret = k8s_doc("secret.yaml")
    config_map = k8s_doc("example-app-configmap.yaml")
    deployment = k8s_doc("example-app-deployment.yaml")
    statefulset = k8s_doc("master-statefulset.yaml")
    service = k8s_doc("master-service.yaml")

    def adapt(pod_name: str, spec: dict[str, Any]) -> None:
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if container["image"].startswith("picoapi:"):
                container["image"] = image
            container.pop("ports", None)
            container.pop("livenessProbe", None)
        for volume in spec["volumes"]:
            if "secret" in volume:
                source = volume.pop("secret")
                volume["configMap"] = {
                    "name": source["secretName"] + suffix,
                    "items": source["items"],
                }
            elif "configMap" in volume:
                volume["configMap"]["name"] += suffix
            elif "persistentVolumeClaim" in volume:
                volume["persistentVolumeClaim"]["claimName"] += suffix
            elif "emptyDir" in volume:
                renamed = f"{volume['name']}-{pod_name}"
                for container in [*spec.get("initContainers", []), *spec["containers"]]:
                    for mount in container.get("volumeMounts", []):
                        if mount["name"] == volume["name"]:
                            mount["name"] = renamed
                volume["name"] = renamed

    tokens = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": secret["metadata"]["name"] + suffix},
        "data": secret["stringData"],
    }
    config_map = copy.deepcopy(config_map)
    config_map["metadata"]["name"] += suffix

    master_name = f"{statefulset['metadata']['name']}-0"
    master_pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": master_name + suffix,
            "labels": statefulset["spec"]["template"]["metadata"]["labels"],
        },
        "spec": copy.deepcopy(statefulset["spec"]["template"]["spec"]),
    }
    claims = []
    for template in statefulset["spec"]["volumeClaimTemplates"]:
        claim = f"{template['metadata']['name']}-{master_name}"  # the StatefulSet's naming
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim + suffix},
                "spec": template["spec"],
            }
        )
        master_pod["spec"]["volumes"].append(
            {"name": template["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}}
        )
    adapt(master_pod["metadata"]["name"], master_pod["spec"])

    app = copy.deepcopy(deployment)
    app["metadata"]["name"] += suffix
    app["spec"]["replicas"] = 1
    spec = app["spec"]["template"]["spec"]
    adapt(app["metadata"]["name"], spec)
    sidecars = spec.pop("initContainers")
    for sidecar in sidecars:
        sidecar.pop("restartPolicy")
        for var in sidecar["env"]:
            if var.get("valueFrom") == {"fieldRef": {"fieldPath": "status.podIP"}}:
                del var["valueFrom"]
                var["value"] = KUBE_POD_IP
    spec["containers"][:0] = sidecars
    for container in spec["containers"]:
        if container["name"] == "app":
            container["image"] = image
            container["command"] = ["python3", "-m", "http.server", "80"]
            container["securityContext"] = {"runAsUser": 0}
        container.setdefault("volumeMounts", []).append(
            {"name": "cluster-dns", "mountPath": "/etc/hosts", "readOnly": True}
        )
    spec["volumes"].append(
        {"name": "cluster-dns", "hostPath": {"path": str(hosts), "type": "File"}}
    )
    hosts.write_text(f"127.0.0.1 localhost\n{KUBE_MASTER_IP} {service['metadata']['name']}\n")
    hosts.chmod(0o644)
    return [tokens, config_map, *claims, master_pod, app]


def test_kube_play_of_the_example_deployment_registers_its_pod(
    podman: Podman, picoapi_image: str, tmp_path: Path
) -> None:
    suffix = f"-{podman.prefix.rsplit('-', 1)[1]}"
    docs = kube_variant(suffix, picoapi_image, tmp_path / "hosts")
    kube_file = tmp_path / "kube.yaml"
    kube_file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    master_pod = next(doc for doc in docs if doc["kind"] == "Pod")["metadata"]["name"]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")["metadata"]["name"]
    app_pod = f"{deployment}-pod-0"  # podman's name for the Deployment's first pod
    podman.track(pods=[master_pod, app_pod], volumes=kube_volumes(docs))
    podman("kube", "play", "--network", "none", "--start=false", str(kube_file))

    # The pod network, as a CNI plugin makes it: each pod's namespace exists once its infra
    # container is created; a link between the two, an address in each.
    spaces = []
    for pod_name in (master_pod, app_pod):
        infra = podman("pod", "inspect", pod_name, "--format", "{{.InfraContainerID}}").stdout
        podman("init", infra.strip())
        spaces.append(podman.netns_of(infra.strip()))
    podman.link(*spaces, f"{KUBE_MASTER_IP}/{KUBE_PREFIX}", f"{KUBE_POD_IP}/{KUBE_PREFIX}")
    podman("pod", "start", master_pod, app_pod)

    master = f"{master_pod}-master"
    sidecar = f"{app_pod}-picoapi-sidecar"

    def registered() -> dict[str, Any] | None:
        status, body = podman.http(master, f"{MASTER}/v1/services/{app_pod}")
        return body if status == 200 and body["status"] == "passing" else None

    try:
        record = wait_until(registered, KUBE_TIMEOUT, 0.5, f"{app_pod} passing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{podman.logs(master)}\n{podman.logs(sidecar)}") from None
    # The ConfigMap's file, with the pod's name and address: the master checks it there.
    # The master takes writes only with a token of its file: the Secret reached both.
    assert (record["name"], record["address"], record["port"]) == ("example-app", KUBE_POD_IP, 80)
    assert record["tags"] == ["example", "nginx", "kubernetes"]
    assert record["check"]["url"] == f"http://{KUBE_POD_IP}:{SIDECAR_PORT}/health"
    status, health = podman.http(sidecar, f"http://127.0.0.1:{SIDECAR_PORT}/health")
    assert (status, health["status"]) == (200, "passing")

    # The pod stops: the sidecar gets SIGTERM and deregisters.
    podman("pod", "stop", "--time", STOP_GRACE, app_pod)
    assert podman.inspect(sidecar)["State"]["ExitCode"] == 0, podman.logs(sidecar)
    status, body = podman.http(master, f"{MASTER}/v1/services/{app_pod}")
    assert status == 404, (body, podman.logs(sidecar))


def kube_volumes(docs: list[dict[str, Any]]) -> list[str]:
    """The podman volumes `kube play` makes of these: one per ConfigMap and claim, by its
    name, and one per emptyDir, by the pod's name for it."""
    volumes = [
        doc["metadata"]["name"]
        for doc in docs
        if doc["kind"] in ("ConfigMap", "PersistentVolumeClaim")
    ]
    for doc in docs:
        if doc["kind"] in ("Pod", "Deployment"):
            spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
            volumes += [volume["name"] for volume in spec["volumes"] if "emptyDir" in volume]
    return volumes
