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

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq)
export DEBIAN_FRONTEND=noninteractive
echo "setup.d/docker.sh: installing ${missing[*]}" >&2
install() { "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; }
# Refresh the package lists only when needed: unknown packages (a fresh image has no
# lists) or an install that fails on stale ones.
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  "${apt[@]}" update >&2
  install
elif ! install; then
  "${apt[@]}" update >&2
  install
fi
