#!/usr/bin/env bash
# converge-spawn (helpers/spawn/converge-spawn.c): the tiny helper the daemon backend starts
# daemons through, straight into their cgroup (clone3 CLONE_INTO_CGROUP; converge.backends.spawn).
# Built once per source version into $CONVERGE_CACHE/build/spawn/, then copied into the
# virtualenv's bin folder (CONVERGE_VENV, set by .ci/bootstrap), next to its `python`, which
# is the one place converge looks for it. Installs gcc with apt-get where there is no C
# compiler (as root); without one it only says so: converge then starts daemons through
# /bin/sh as before. Idempotent: nothing is rebuilt or copied when the source is unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CONVERGE_CACHE:-$HOME/.cache/converge}
venv=${CONVERGE_VENV:?"setup.d/spawn.sh: run by .ci/bootstrap (CONVERGE_VENV)"}
src=$here/helpers/spawn/converge-spawn.c
out=$cache/build/spawn
built=$out/converge-spawn-$(sha256sum "$src" | cut -c1-16)
dest=$venv/bin/converge-spawn

if [ ! -x "$built" ]; then
  cc=${CC:-cc}
  if ! command -v "$cc" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "setup.d/spawn.sh: installing gcc (apt-get) to build converge-spawn" >&2
      # shellcheck source=../apt.sh
      . "$here/.ci/apt.sh"
      apt_install gcc libc6-dev || true
    fi
    if ! command -v "$cc" >/dev/null 2>&1; then
      echo "setup.d/spawn.sh: no C compiler: converge-spawn not built (daemons start through /bin/sh)" >&2
      exit 0
    fi
  fi
  mkdir -p "$out"
  tmp=$(mktemp "$out/.converge-spawn.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  flags=(-O2 -Wall -Wextra -Werror -fstack-protector-strong -D_FORTIFY_SOURCE=2)
  # Static where libc.a is there: no dynamic loader on the restart path (~0.5 ms an exec).
  if ! "$cc" "${flags[@]}" -static -o "$tmp" "$src" 2>/dev/null; then
    "$cc" "${flags[@]}" -o "$tmp" "$src"
  fi
  chmod 0755 "$tmp"
  mv -f "$tmp" "$built"
  trap - EXIT
fi
if ! cmp -s "$built" "$dest"; then
  install -m 0755 "$built" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
fi
