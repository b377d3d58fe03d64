#!/usr/bin/env bash
# Install what the Docker tests (tests/docker) and benchmarks/bench_container.py need:
# Debian's Docker engine (dockerd, containerd, runc, docker-init), busybox-static (the
# test image's rootfs) and iproute2 (each test engine gets a bridge of its own).
# Idempotent and silent when everything is present; run by .ci/bootstrap.
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup.d/docker.sh: installing ${missing[*]}" >&2
# shellcheck source=../apt.sh
. "$(dirname "$0")/../apt.sh"
apt_install "${missing[@]}"
