#!/usr/bin/env bash
# Install what the Docker tests (tests/docker) and benchmarks/bench_container.py need:
# Debian's Docker engine (dockerd, containerd, runc, docker-init) and busybox-static (the
# test image's rootfs). Idempotent and silent when everything is present; run by .ci/bootstrap.
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo -n)
else
  sudo=()
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup.d/docker.sh: installing ${missing[*]}" >&2
# Only refresh the package lists when the candidates are unknown (a fresh image has none).
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
fi
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
