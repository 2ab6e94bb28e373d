#!/usr/bin/env bash
# `make image`: build localhost/picoapi-sidecar:latest from deploy/Dockerfile, with no image
# registry and no package index needed.
#
#   1. The wheels: the project's dependencies, pip and setuptools are built on this machine
#      (`pip wheel`) into deploy/wheelhouse/, again only when pyproject.toml changes; the
#      build installs from there with PIP_NO_INDEX=1.
#   2. The base: $BASE_IMAGE if given; else python:3.11-slim if present or pullable; else a
#      Debian made here with debootstrap (minbase + python3), imported as
#      localhost/picoapi-base:bookworm and kept, with its tarball under $PICOAPI_CACHE.
#   3. The build: podman (with deploy/podman/containers.conf unless CONTAINERS_CONF is
#      set), or docker where podman is missing and a docker engine answers.
#
# Settings (environment or make variables): IMAGE, BASE_IMAGE, ENGINE (podman|docker),
# PICOAPI_CACHE (default ~/.cache/picoapi), DEBIAN_MIRROR, DEBIAN_BASE (the local base's
# name), PY (a Python 3.11 with pip).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=${IMAGE:-localhost/picoapi-sidecar:latest}
OFFICIAL_BASE=docker.io/library/python:3.11-slim
DEBIAN_SUITE=bookworm # its python3 is 3.11, as the wheels are
DEBIAN_BASE=${DEBIAN_BASE:-localhost/picoapi-base:$DEBIAN_SUITE}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${PICOAPI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picoapi}
WHEELHOUSE=deploy/wheelhouse
PY=${PY:-.venv/bin/python}
PULL_TIMEOUT=120

say() { printf 'image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

engine() {
  if [ -n "${ENGINE:-}" ]; then
    echo "$ENGINE"
  elif command -v podman >/dev/null 2>&1; then
    echo podman
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
  else
    die "neither podman nor a docker engine is here (Debian: apt-get install podman runc)"
  fi
}
ENGINE=$(engine)
if [ "$ENGINE" = podman ]; then
  # runc (crun refuses hybrid cgroups) and ulimits within root's hard limit: see the file.
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}
fi

have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

wheels() {
  local stamp=$WHEELHOUSE/.built
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    say "wheels: $WHEELHOUSE is up to date"
    return
  fi
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PY is not Python 3.11: the wheels must fit the image's Python"
  say "wheels: building the dependencies into $WHEELHOUSE"
  find "$WHEELHOUSE" -name '*.whl' -delete
  "$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$WHEELHOUSE" \
    . pip setuptools
  # The image builds the project itself from the source; only what it needs stays here.
  find "$WHEELHOUSE" -name 'picoapi_sidecar-*.whl' -delete
  touch "$stamp"
}

debian_base() {
  local tarball=$CACHE/debian-$DEBIAN_SUITE-python3.tar.gz
  if [ ! -f "$tarball" ]; then
    [ "$(id -u)" = 0 ] || die "debootstrap needs root (or give BASE_IMAGE=...)"
    command -v debootstrap >/dev/null 2>&1 \
      || die "debootstrap is missing (Debian: apt-get install debootstrap)"
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: $work is local
    trap "rm -rf '$work'" EXIT
    say "base: debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR (about a minute)"
    debootstrap --variant=minbase --include=python3 "$DEBIAN_SUITE" "$work/rootfs" \
      "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    # What a slim image leaves out: package caches and lists, documentation, locales.
    rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/* \
      "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* \
      "$work"/rootfs/usr/share/locale/* "$work"/rootfs/usr/share/info/* \
      "$work"/rootfs/var/log/*
    mkdir -p "$CACHE"
    tar --numeric-owner -C "$work/rootfs" -czf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$work"
    trap - EXIT
  fi
  say "base: importing $tarball as $DEBIAN_BASE"
  local quiet=()
  [ "$ENGINE" != podman ] || quiet=(--quiet) # docker import prints only the id
  "$ENGINE" import "${quiet[@]}" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$DEBIAN_BASE" >/dev/null
}

base() {
  if [ -n "${BASE_IMAGE:-}" ]; then
    echo "$BASE_IMAGE"
  elif have_image "$OFFICIAL_BASE"; then
    echo "$OFFICIAL_BASE"
  elif have_image "$DEBIAN_BASE"; then
    echo "$DEBIAN_BASE"
  elif timeout "$PULL_TIMEOUT" "$ENGINE" pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
    echo "$OFFICIAL_BASE"
  else
    say "base: $OFFICIAL_BASE cannot be pulled (no registry answers); making a Debian base"
    debian_base
    echo "$DEBIAN_BASE"
  fi
}

# One build at a time on this machine: two would share the wheelhouse and the tags.
mkdir -p "$CACHE"
exec 9>"$CACHE/image.lock"
flock 9

wheels
BASE=$(base)
say "build: $IMAGE on $BASE with $ENGINE"
build=(build -f deploy/Dockerfile --build-arg "BASE_IMAGE=$BASE" --build-arg PIP_NO_INDEX=1)
if [ "$ENGINE" = podman ]; then
  build+=(--ignorefile deploy/dockerignore)
fi
# The builder stage is tagged too, so the cache of the next build survives the clean-up of
# the earlier builds, which are left untagged (dangling) by these tags.
"$ENGINE" "${build[@]}" --target builder -t "$IMAGE-builder" .
"$ENGINE" "${build[@]}" -t "$IMAGE" .
"$ENGINE" image prune --force --filter label=io.picoapi.image=picoapi-sidecar >/dev/null
say "done: $IMAGE ($("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE") bytes)"
