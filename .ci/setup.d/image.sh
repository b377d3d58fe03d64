#!/usr/bin/env bash
# The base of the operator image (Dockerfile), made without any image registry: a Debian
# bookworm minbase root filesystem with python3 and python3-venv (debootstrap from
# Debian's package archive), trimmed and cached as a tar under $CONVERGE_CACHE/images for
# `docker import` (.ci/build-image does that). Cold: about a minute; then a stamp check.
# CONVERGE_DEBIAN_MIRROR overrides debootstrap's default mirror.
set -euo pipefail
cache=${CONVERGE_CACHE:-$HOME/.cache/converge}
images=$cache/images
BASE_VERSION=bookworm-minbase-python3-1   # bump to rebuild the cached base
tar=$images/$BASE_VERSION.tar
[ -s "$tar" ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "setup.d/image.sh: installing debootstrap" >&2
  # shellcheck source=../apt.sh
  . "$(dirname "$0")/../apt.sh"
  apt_install debootstrap
fi

mkdir -p "$images"
exec 9>"$images/.image.lock"   # two bootstraps at once build once
flock 9
[ -s "$tar" ] && exit 0
work=$(mktemp -d)
trap '"${sudo[@]}" rm -rf "$work"' EXIT
echo "setup.d/image.sh: debootstrap of bookworm minbase + python3 (once, about a minute)" >&2
"${sudo[@]}" debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" \
  ${CONVERGE_DEBIAN_MIRROR:+"$CONVERGE_DEBIAN_MIRROR"} > "$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1; }
# What an image never uses: docs, man pages, translations, apt's package lists and caches.
"${sudo[@]}" rm -rf "$work"/rootfs/usr/share/{doc,man,info,locale,lintian} \
  "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/cache/debconf/*-old \
  "$work"/rootfs/var/log/*
"${sudo[@]}" tar -C "$work/rootfs" --numeric-owner -cf "$tar.tmp" .
mv "$tar.tmp" "$tar"
echo "setup.d/image.sh: base rootfs $(du -h "$tar" | cut -f1) in $tar" >&2
