#!/usr/bin/env bash
# terraform or tofu for the Terraform backend and its tests (tests/terraform).
# Idempotent and quiet: nothing to do when `terraform` or `tofu` is on PATH or in
# $CONVERGE_CACHE/bin. Otherwise builds OpenTofu's `tofu` from the Go module proxy into
# $CONVERGE_CACHE/bin (needs go; several minutes on 2 cores, the Go build cache is kept):
# a throwaway module requiring github.com/opentofu/opentofu at $TOFU_VERSION with the one
# `replace` of that tag's go.mod (OpenTofu's fork of hcl/v2), then `go build` of cmd/tofu.
set -euo pipefail
cache=${CONVERGE_CACHE:-$HOME/.cache/converge}
bin=$cache/bin
TOFU_VERSION=${TOFU_VERSION:-v1.10.10}
# The replace line of github.com/opentofu/opentofu@v1.10.10's go.mod; keep it in step with
# TOFU_VERSION (https://proxy.golang.org/github.com/opentofu/opentofu/@v/$TOFU_VERSION.mod).
HCL_REPLACE='github.com/hashicorp/hcl/v2 v2.20.1 => github.com/opentofu/hcl/v2 v2.20.2-0.20251021132045-587d123c2828'

if command -v terraform >/dev/null 2>&1 || command -v tofu >/dev/null 2>&1 \
   || [ -x "$bin/terraform" ] || [ -x "$bin/tofu" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "setup.d/terraform.sh: neither terraform nor tofu found, and no go to build tofu with;" \
       "install terraform or OpenTofu (the terraform tests will be skipped)" >&2
  exit 0
fi

echo "setup.d/terraform.sh: building tofu $TOFU_VERSION from the Go module proxy into $bin (slow, once)" >&2
mkdir -p "$bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<EOF
module converge.local/tofubuild

require github.com/opentofu/opentofu $TOFU_VERSION

replace $HCL_REPLACE
EOF
export GOFLAGS=-mod=mod CGO_ENABLED=0
go build -trimpath -ldflags "-s -w" -o "$bin/tofu.tmp" github.com/opentofu/opentofu/cmd/tofu >&2
mv "$bin/tofu.tmp" "$bin/tofu"
"$bin/tofu" version >&2
