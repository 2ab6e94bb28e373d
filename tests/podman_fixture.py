"""Podman for tests: the image `make image` builds (once a session), and what a test makes
with it, removed by name at its end.

    from tests import podman_fixture
    picoapi_image = podman_fixture.picoapi_image  # bound, not imported: no F811 on uses
    podman = podman_fixture.podman

Podman runs with deploy/podman/containers.conf (runc, and ulimits within root's hard limit
on these machines). Pods get `--network none`: one loopback shared by their containers,
as in a Kubernetes pod, and nothing in the machine's own namespace; podman's bridge network
(iptables rules and forwarding in the machine's namespace) is never used. Where pods must
reach each other, the test wires their namespaces itself (`Podman.link`), as a CNI plugin
would. Requests to a daemon go from inside its own container (`Podman.http`), never from
the machine to a namespace's address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import ROOT
from tests.netns import HTTP_SCRIPT  # run by the image's python3 inside a container

CONTAINERS_CONF: Final = ROOT / "deploy" / "podman" / "containers.conf"
IMAGE: Final = "localhost/picoapi-sidecar:latest"
PAUSE_IMAGE_PREFIX: Final = "localhost/podman-pause:"  # podman builds it for a pod's infra
# The venv's stamp: `make image` must not reinstall the venv this session runs from.
VENV_STAMP: Final = ".venv/.installed"
COMMAND_TIMEOUT: Final = 60.0
# A cold `make image`: about a minute of debootstrap, then the wheels and the build.
IMAGE_TIMEOUT: Final = 900.0
HTTP_TIMEOUT: Final = 3.0
LOG_TAIL: Final = 3000


class PodmanError(RuntimeError):
    """A podman command failed; the message carries its stderr."""


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman_binary() -> str:
    """The podman command, or a skip saying why podman cannot run here."""
    if sys.platform != "linux":
        pytest.skip("podman pods need Linux")
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed (Debian: apt-get install podman runc)")
    if os.geteuid() != 0:
        pytest.skip("the pod tests run podman as root (they wire the pods' namespaces)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (deploy/podman/containers.conf asks for it)")
    done = subprocess.run(
        [podman, "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=podman_env(),
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        pytest.skip(f"podman cannot run here: {done.stderr.strip()[-500:]}")
    return podman


def _images(podman: str) -> set[str]:
    done = subprocess.run(
        [podman, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=podman_env(),
        stdin=subprocess.DEVNULL,
    )
    return set(done.stdout.split())


@pytest.fixture(scope="session")
def picoapi_image() -> Iterator[str]:
    """`make image`, once a session: the image's name. The image stays (it is what `make
    image` is for, and the next build's cache); the pause image podman builds for pod
    infra containers is removed again if this session made it."""
    podman = podman_binary()
    before = _images(podman)
    done = subprocess.run(
        ["make", "--no-print-directory", "-o", VENV_STAMP, "image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=IMAGE_TIMEOUT,
        env={**podman_env(), "IMAGE": IMAGE},
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        pytest.fail(
            f"make image failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
        )
    yield IMAGE
    for name in _images(podman) - before:
        if name.startswith(PAUSE_IMAGE_PREFIX):  # in use by another session's pod: kept
            subprocess.run(
                [podman, "rmi", name],
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                env=podman_env(),
                stdin=subprocess.DEVNULL,
            )


class Podman:
    """Podman commands for one test, and everything they made: pods, containers, volumes and
    network namespace names, each removed by name in `close()`."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.prefix = f"picoapi-t{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.pods: list[str] = []
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.netns: list[str] = []

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def __call__(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=podman_env(),
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done

    def pod(self, role: str) -> str:
        """A pod on `--network none`: its containers share one loopback and nothing else."""
        name = self.name(role)
        self.pods.append(name)
        self("pod", "create", "--name", name, "--network", "none")
        return name

    def run(
        self, role: str, image: str, *argv: str, pod: str, options: tuple[str, ...] = ()
    ) -> str:
        """Start a container of `image` in `pod`, detached; its name."""
        name = self.name(role)
        self.containers.append(name)
        self("run", "--detach", "--name", name, "--pod", pod, *options, image, *argv)
        return name

    def track(self, *, pods: Iterable[str] = (), volumes: Iterable[str] = ()) -> None:
        """Also remove these at the end (made by `podman kube play`, say)."""
        self.pods.extend(pods)
        self.volumes.extend(volumes)

    def inspect(self, name: str) -> dict[str, Any]:
        data = json.loads(self("inspect", "--type", "container", name).stdout)
        assert isinstance(data, list) and data
        record: dict[str, Any] = data[0]
        return record

    def logs(self, name: str) -> str:
        done = self("logs", name, check=False)
        return (done.stdout + done.stderr)[-LOG_TAIL:]

    def http(
        self, container: str, url: str, method: str = "GET", timeout: float = HTTP_TIMEOUT
    ) -> tuple[int, Any]:
        """`method url` from inside `container`: (status, JSON body or text); 0 if nothing
        answered. Only loopback: what the container's own namespace holds."""
        host, _, rest = url.removeprefix("http://").partition(":")
        port, _, path = rest.partition("/")
        if host != "127.0.0.1":
            raise ValueError(f"Podman.http only talks to 127.0.0.1 inside a container, not {url}")
        done = self(
            *("exec", container, "python3", "-I", "-S", "-c", HTTP_SCRIPT),
            *(method, host, port, "/" + path, str(timeout)),
            timeout=timeout + COMMAND_TIMEOUT,
        )
        answer = json.loads(done.stdout)
        try:
            body = json.loads(answer["body"])
        except ValueError:
            body = answer["body"]
        return int(answer["status"]), body

    def netns_of(self, container: str) -> str:
        """A name for the network namespace of a created or running `container` (its pod's,
        for an infra container), for `ip -n`; the name alone is removed at the end."""
        pid = self.inspect(container)["State"]["Pid"]
        if not pid:
            raise PodmanError(f"{container} has no process yet (podman init it first)")
        name = f"{self.prefix}-{len(self.netns)}"
        ip("netns", "attach", name, str(pid))
        self.netns.append(name)
        return name

    def link(self, left: str, right: str, left_cidr: str, right_cidr: str) -> None:
        """A veth pair between two namespaces (names from `netns_of`), `eth0` in each, with
        these addresses: what a CNI plugin gives pods, made without the machine's own
        namespace."""
        veth = ("type", "veth", "peer", "name", "eth0", "netns", right)
        ip("-n", left, "link", "add", "eth0", *veth)
        for ns, cidr in ((left, left_cidr), (right, right_cidr)):
            ip("-n", ns, "addr", "add", cidr, "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        """Remove every pod, container and volume made, and every namespace name, by name."""
        errors = []
        for name in reversed(self.containers):
            done = self("rm", "--force", "--time", "0", "--ignore", name, check=False)
            if done.returncode != 0:
                errors.append(done.stderr.strip())
        for name in reversed(self.pods):
            done = self("pod", "rm", "--force", "--time", "0", "--ignore", name, check=False)
            if done.returncode != 0:
                errors.append(done.stderr.strip())
        for name in reversed(self.volumes):
            done = self("volume", "rm", "--force", name, check=False)
            if done.returncode != 0 and "no such volume" not in done.stderr:
                errors.append(done.stderr.strip())
        for name in reversed(self.netns):
            with contextlib.suppress(PodmanError):
                ip("netns", "del", name)  # gone with its pod already is fine
        self.pods.clear()
        self.containers.clear()
        self.volumes.clear()
        self.netns.clear()
        if errors:
            raise PodmanError("; ".join(errors))


def ip(*args: str) -> str:
    ip_path = shutil.which("ip")
    if ip_path is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    done = subprocess.run(
        [ip_path, *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise PodmanError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture
def podman() -> Iterator[Podman]:
    """Podman for one test; what it made is removed at the end, pass or fail."""
    runner = Podman(podman_binary())
    try:
        yield runner
    finally:
        runner.close()


class ConfigMapDir:
    """A folder laid out as the kubelet lays out a ConfigMap volume: each key a symlink to
    `..data/KEY`, `..data` a symlink to a timestamped folder; `update` writes a new folder
    and swaps `..data` by rename, as the kubelet's atomic writer does."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        self.root = root
        root.mkdir(mode=0o755, parents=True)
        root.chmod(0o755)  # tmp_path is 0700: the container's user must get in
        self._generation = 0
        self._write(files)
        for key in files:
            (root / key).symlink_to(f"..data/{key}")

    def update(self, files: dict[str, str]) -> None:
        old = (self.root / "..data").readlink()
        self._write(files)
        shutil.rmtree(self.root / old)

    def _write(self, files: dict[str, str]) -> None:
        self._generation += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime())
        folder = self.root / f"{stamp}.{self._generation}"
        folder.mkdir(mode=0o755)
        for key, text in files.items():
            (folder / key).write_text(text)
            (folder / key).chmod(0o644)
        (self.root / "..data_tmp").symlink_to(folder.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")
