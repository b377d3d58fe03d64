#!/usr/bin/env bash
# Install the peers the benchmarks compare converge with, idempotently, cached outside
# the repo under ${CONVERGE_CACHE:-~/.cache/converge}/peers:
#   peers/supervisor/   venv with supervisor (supervisord, supervisorctl) from PyPI
#   peers/zenml/        venv with ZenML from PyPI (its LocalDaemonService, zenml.services)
# A second run only checks stamps and is fast. Usage:
#   bash benchmarks/setup_peers.sh [supervisor|zenml ...]     (default: all)
# Env: SUPERVISOR_SPEC (default supervisor==4.3.0), ZENML_SPEC (default zenml[local]==0.98.0).
# Prints one line per peer: "<peer> <venv bin dir>" or "<peer> FAILED: <reason>"; exits
# non-zero if any requested peer failed (the benchmark then reports it as not run).
set -uo pipefail
cache=${CONVERGE_CACHE:-$HOME/.cache/converge}
peers=$cache/peers
mkdir -p "$peers"
python=${PEERS_PYTHON:-python3}

SUPERVISOR_SPEC=${SUPERVISOR_SPEC:-supervisor==4.3.0}
ZENML_SPEC=${ZENML_SPEC:-zenml[local]==0.98.0}

# install_venv NAME SPEC CHECK_PY: create peers/NAME, pip install SPEC, run CHECK_PY
# (a python -c snippet that must succeed) and record a stamp of SPEC.
install_venv() {
  local name=$1 spec=$2 check=$3
  local venv=$peers/$name stamp=$peers/$name/.peer-stamp log=$peers/$name.install.log
  if [ "$(cat "$stamp" 2>/dev/null)" = "$spec" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "$name $venv/bin"
    return 0
  fi
  echo "setup_peers: installing $spec into $venv (log: $log)" >&2
  rm -f "$stamp"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >"$log" 2>&1 || { echo "$name FAILED: venv creation (see $log)"; return 1; }
  fi
  if ! "$venv/bin/pip" install --disable-pip-version-check "$spec" >>"$log" 2>&1; then
    echo "$name FAILED: pip install $spec (see $log)"
    return 1
  fi
  if ! "$venv/bin/python" -c "$check" >>"$log" 2>&1; then
    echo "$name FAILED: import check after installing $spec (see $log)"
    return 1
  fi
  echo "$spec" > "$stamp"
  echo "$name $venv/bin"
}

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(supervisor zenml)
rc=0
for p in "${want[@]}"; do
  case $p in
    supervisor)
      install_venv supervisor "$SUPERVISOR_SPEC" "import supervisor.supervisord" || rc=1 ;;
    zenml)
      install_venv zenml "$ZENML_SPEC" \
        "from zenml.services import LocalDaemonService, HTTPEndpointHealthMonitor" || rc=1 ;;
    *)
      echo "setup_peers: unknown peer '$p' (supervisor|zenml)" >&2; rc=2 ;;
  esac
done
exit $rc
