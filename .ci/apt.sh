# Sourced by the .ci/setup.d scripts (not run on its own).
# apt_install PKG...: install Debian packages (sudo -n when not root), refreshing the package
# lists only when needed: packages apt does not know (a fresh image has no lists) or an
# install that fails on stale ones. Returns apt-get's status; prints only on failure.
apt_install() {
  local -a sudo=() apt
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq)
  export DEBIAN_FRONTEND=noninteractive
  if apt-cache show "$@" >/dev/null 2>&1 \
      && "${apt[@]}" install -y --no-install-recommends "$@" >/dev/null; then
    return 0
  fi
  "${apt[@]}" update >&2 || return
  "${apt[@]}" install -y --no-install-recommends "$@" >/dev/null
}
