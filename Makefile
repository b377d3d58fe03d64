# The README's commands. .ci/bootstrap installs what each needs (idempotent, cached in
# $CONVERGE_CACHE, default ~/.cache/converge; one virtualenv per checkout).
SHELL := /bin/bash
.PHONY: demo demo-down clean test lint bench crds manifests image lock
DEMO_STORE ?= $(CURDIR)/.converge

# Only what the demo needs: a virtualenv with converge's own dependencies (`pip install .`),
# no root, no Docker, no Terraform, no test tools. Leaves the stack running (make demo-down).
demo:
	@bin=$$(CONVERGE_SETUP=none CONVERGE_EXTRAS= .ci/bootstrap | tail -1) && \
	export CONVERGE_STORE=$(DEMO_STORE) && \
	$$bin/converge apply -f manifests/examples/ && \
	$$bin/converge reconcile --timeout 60s && \
	$$bin/converge get -o wide && \
	echo "the stack keeps running; stop and forget it with: make demo-down"

# Deprovision the demo stack and forget it (the store folder stays; make clean removes it).
demo-down:
	@bin=$$(CONVERGE_SETUP=none CONVERGE_EXTRAS= .ci/bootstrap | tail -1) && \
	CONVERGE_STORE=$(DEMO_STORE) $$bin/converge delete -f manifests/examples/ --ignore-not-found

# Stop every service of the demo store, then remove the store, this checkout's virtualenv
# and the tools' caches. The shared tool cache ($CONVERGE_CACHE/bin) stays.
clean:
	@venv=$$(.ci/bootstrap --print-venv); \
	if [ -x "$$venv/bin/converge" ] && [ -d "$(DEMO_STORE)" ]; then \
	  CONVERGE_STORE=$(DEMO_STORE) "$$venv/bin/converge" down --force -A -l '' --timeout 60s || exit 1; \
	fi; \
	rm -rf "$(DEMO_STORE)" "$$venv" .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info; \
	find controller backends tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +

# Everything the tests need (extras, dockerd, terraform, the control plane), then lint,
# type-check and run the whole suite. .ci/run (CI) calls exactly this.
test:
	@bin=$$(CONVERGE_EXTRAS=test .ci/bootstrap | tail -1) && \
	$$bin/ruff check controller backends tests benchmarks && \
	.ci/typecheck $$bin && \
	$$bin/pytest -q -ra tests

bench:
	@bin=$$(.ci/bootstrap | tail -1) && for b in benchmarks/bench_*.py; do $$bin/python $$b || exit 1; done

# Regenerate crds/ from the API models (controller/api.py), and the chart's copy and
# manifests/operator/ with them; tests fail while any is stale.
crds:
	@bin=$$(CONVERGE_SETUP=none .ci/bootstrap | tail -1) && $$bin/converge crds > crds/managedservices.converge.dev.yaml && \
	.ci/render-manifests

# Copy crds/ into the chart and render manifests/operator/ from the chart (helm).
manifests:
	@.ci/render-manifests

# The operator image on the engine DOCKER_HOST names (no registry, no network in the build).
image:
	@.ci/build-image

# Re-pin the operator image's dependencies (requirements-operator.txt) from the venv.
lock:
	@.ci/lock-operator
