#!/usr/bin/env bash
# A real Kubernetes control plane for the cluster tests (tests/cluster): kube-apiserver,
# kube-controller-manager, kube-scheduler (kwok's fake nodes still need pods bound to
# them), etcd, kwok (a fake node so Deployments roll out without a kubelet) and helm, all
# built from the Go module proxy into $CONVERGE_CACHE/bin.
# Idempotent: a binary that exists with the pinned version's stamp is not rebuilt; the Go
# module and build caches (GOMODCACHE, GOCACHE: outside the repo) make a rebuild cheap.
# Cold, on 2 cores: about 13 minutes for all six.
#
# kube-apiserver, kube-controller-manager and kube-scheduler: a throwaway module requiring
# k8s.io/kubernetes at KUBE_VERSION with every k8s.io/<staging> module replaced by the
# matching v0.x release (the `=> ./staging/...` lines of that tag's go.mod, read from the
# module itself). The checksum database has no entry for k8s.io/kubernetes, so that build
# runs with GOSUMDB=off; the others are checked as usual.
set -euo pipefail
cache=${CONVERGE_CACHE:-$HOME/.cache/converge}
bin=$cache/bin
KUBE_VERSION=${KUBE_VERSION:-v1.32.4}
ETCD_VERSION=${ETCD_VERSION:-v3.5.21}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
staging_version=v0${KUBE_VERSION#v1}   # v1.32.4 -> v0.32.4
# kwok's own default stages (a node turns Ready and keeps a lease; a pod turns Ready, completes,
# is deleted), from its module: kwok runs nothing without them (tests/cluster/kwok.py).
kwok_stages=$cache/kwok/stages-$KWOK_VERSION.yaml

have() {  # have NAME VERSION: the cached binary exists and was built for VERSION
  [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]
}
built() { echo "$2" > "$bin/.$1.version"; }

if have kube-apiserver "$KUBE_VERSION" && have kube-controller-manager "$KUBE_VERSION" \
   && have kube-scheduler "$KUBE_VERSION" && have etcd "$ETCD_VERSION" && have kwok "$KWOK_VERSION" \
   && have helm "$HELM_VERSION" && [ -s "$kwok_stages" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "setup.d/kube.sh: no go on PATH: cannot build the test control plane" \
       "(the cluster tests will fail)" >&2
  exit 1
fi
mkdir -p "$bin"
exec 9>"$bin/.kube.lock"   # two bootstraps at once build once: the second waits, then finds the stamps
flock 9
if have kube-apiserver "$KUBE_VERSION" && have kube-controller-manager "$KUBE_VERSION" \
   && have kube-scheduler "$KUBE_VERSION" && have etcd "$ETCD_VERSION" && have kwok "$KWOK_VERSION" \
   && have helm "$HELM_VERSION" && [ -s "$kwok_stages" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
ldflags="-s -w"

if ! have kube-apiserver "$KUBE_VERSION" || ! have kube-controller-manager "$KUBE_VERSION" \
   || ! have kube-scheduler "$KUBE_VERSION"; then
  echo "setup.d/kube.sh: building kube-apiserver, kube-controller-manager, kube-scheduler $KUBE_VERSION" \
       "(slow, once)" >&2
  mkdir -p "$work/kube" && cd "$work/kube"
  modfile=$(GOSUMDB=off go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
            | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  {
    echo "module converge.local/kubebuild"
    echo
    echo "go 1.23"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/[a-z0-9-]*$#\t\1 => \1 '"$staging_version"'#p' "$modfile"
    echo ")"
  } > go.mod
  grep -q 'k8s.io/client-go => k8s.io/client-go' go.mod || {
    echo "setup.d/kube.sh: could not read the staging replaces from $modfile" >&2; exit 1; }
  # The version the binaries report (kubectl version, /version) and the server's checks.
  pkg=k8s.io/component-base/version
  vflags="-X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    have "$cmd" "$KUBE_VERSION" && continue
    GOSUMDB=off go build -trimpath -ldflags "$ldflags $vflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
    mv "$bin/$cmd.tmp" "$bin/$cmd"
    built "$cmd" "$KUBE_VERSION"
  done
fi

if ! have etcd "$ETCD_VERSION"; then
  echo "setup.d/kube.sh: building etcd $ETCD_VERSION" >&2
  mkdir -p "$work/etcd" && cd "$work/etcd"
  printf 'module converge.local/etcdbuild\n\ngo 1.23\n' > go.mod
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  go build -trimpath -ldflags "$ldflags" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
  mv "$bin/etcd.tmp" "$bin/etcd"
  built etcd "$ETCD_VERSION"
fi

if ! have kwok "$KWOK_VERSION"; then
  echo "setup.d/kube.sh: building kwok $KWOK_VERSION" >&2
  GOFLAGS= GOBIN="$work/gobin" go install -trimpath -ldflags "$ldflags" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
  mv "$work/gobin/kwok" "$bin/kwok"
  built kwok "$KWOK_VERSION"
fi

if [ ! -s "$kwok_stages" ]; then
  dir=$(cd "$work" && GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  mkdir -p "$(dirname "$kwok_stages")"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"
    cat "$dir/kustomize/stage/$f"
  done > "$kwok_stages.tmp"
  mv "$kwok_stages.tmp" "$kwok_stages"
fi

if ! have helm "$HELM_VERSION"; then
  echo "setup.d/kube.sh: building helm $HELM_VERSION" >&2
  GOFLAGS= GOBIN="$work/gobin" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  mv "$work/gobin/helm" "$bin/helm"
  built helm "$HELM_VERSION"
fi
"$bin/kube-apiserver" --version >&2
