#!/usr/bin/env bash
# What the tests need from the system (`make test` runs this first): installed with apt-get
# when it is missing and we may (root on Debian); else named, and the tests that need it
# skip, each saying why.
set -euo pipefail
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# etcd (3.4 on Debian 12, 3.5+ later) for the etcd tests; etcdctl is for people.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server etcd-client)
# The image and the pod tests (make image, tests/test_podman.py): podman with runc (see
# deploy/podman/containers.conf), catatonit for pod infra and --init, debootstrap for the base.
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v catatonit >/dev/null 2>&1 || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# The real consumers of the read side (tests/test_consumer_*.py): Prometheus with http_sd,
# and npm for the node `consul` client the tests install into tests/consumers/node/.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: installing ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
else
  echo "system-deps: missing ${need[*]} (not root on Debian: not installed);" \
    "the tests that need them skip" >&2
fi
