# The two commands of the README. Everything is installed by .ci/bootstrap (idempotent,
# cached in $CONVERGE_CACHE, default ~/.cache/converge).
SHELL := /bin/bash
.PHONY: demo test lint bench crds manifests image lock

# Install everything, then apply the example stack and converge it with the file store.
demo:
	@bin=$$(.ci/bootstrap | tail -1) && \
	export CONVERGE_STORE=$${CONVERGE_STORE:-$$PWD/.converge} && \
	$$bin/converge apply -f manifests/examples/ && \
	$$bin/converge reconcile --timeout 60s && \
	$$bin/converge get -o wide

# Install everything, then lint and run the whole test suite (real processes, dockerd, terraform).
test:
	@bin=$$(.ci/bootstrap | tail -1) && \
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
