# kubeforge: the project's verbs. A newcomer, CI (.ci/run) and reviewers use the same ones.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every extra but gpu: the operator, trainer, server and the test tools.
EXTRAS ?= operator,trainer,server,dev

.PHONY: help venv check lint typecheck unit test integration e2e kopf-floor crds cluster-bins cluster \
        cluster-down kind demo bench images node-bins keda-bins clean ship-bins workflows images-push \
        test-deps

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp re-runs the install only when pyproject.toml changes (a warm run does no work).
# constraints.txt pins every package (`make lock` refreshes it) so CI and images get what was tested.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed ## Create .venv with everything installed (cached)

lock: venv ## refresh constraints.txt from the installed venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^kubeforge' > constraints.txt

lint: venv ## ruff
	$(BIN)/ruff check operator trainer-image server-image cluster tests benchmarks

typecheck: venv ## mypy strict on the operator package
	$(BIN)/mypy

unit: venv ## fast unit tests (no cluster)
	$(BIN)/pytest tests/unit -q -m "not slow"

check: lint typecheck unit workflows ## ruff, mypy, fast unit tests, actionlint (under a minute warm)

# actionlint (built once from its Go module, cached) on .github/workflows (the release pipeline).
workflows: venv ## actionlint .github/workflows
	$$($(BIN)/python -m kubeforge_cluster.shipbins --path actionlint | tail -1) .github/workflows/*.yml

integration: venv cluster-bins keda-bins ## integration tests on the real local control plane
	KUBEFORGE_REQUIRE_CLUSTER=1 $(BIN)/pytest tests/integration -q

# The oldest kopf of pyproject's range (`kopf>=1.38,<2`); the newest is constraints.txt's pin.
KOPF_FLOOR ?= 1.38.0
KOPF_FLOOR_DIR ?= /tmp/kubeforge-kopf-$(KOPF_FLOOR)

kopf-floor: venv ## the operator's unit tests against the oldest supported kopf (KOPF_FLOOR)
	$(BIN)/pip install -q --no-deps --target $(KOPF_FLOOR_DIR) "kopf==$(KOPF_FLOOR)"
	PYTHONPATH=$(KOPF_FLOOR_DIR):$$PYTHONPATH $(BIN)/pytest -q tests/unit/operator tests/unit/tuningstudy tests/unit/modeldeployment

e2e: venv cluster-bins node-bins ## e2e tests (real pods where the machine allows; skipped with a reason otherwise)
	$(BIN)/pytest tests/e2e -q

test: venv cluster-bins node-bins keda-bins test-deps ## everything README promises: unit + integration + e2e (what .ci/run calls)
	KUBEFORGE_REQUIRE_CLUSTER=1 $(BIN)/pytest tests -q

# The real node's binaries (containerd, crictl, CoreDNS, kubelet, kube-proxy, pause + Debian's
# runc, CNI plugins, iptables, busybox-static), built once and cached, only where this machine can
# run real pods (root, netns, cgroups, bridge netfilter); elsewhere it says why and does nothing,
# and tests/e2e/realpods skips with that reason. Cold ~8-14 min on 2 idle cores (see
# cluster/kubeforge_cluster/realnode/README.md); KUBEFORGE_REALPODS=0 turns it and the suite off.
node-bins: venv cluster-bins ## build (once, cached) the real node's binaries where real pods can run
	$(BIN)/python -m kubeforge_cluster.realnode build --if-supported --apt

crds: venv ## regenerate crds/ (and the chart's copy) from the pydantic models
	$(BIN)/python -m kubeforge.crdgen crds
	@if [ -d charts/kubeforge ]; then mkdir -p charts/kubeforge/crds && cp crds/*.yaml charts/kubeforge/crds/; fi

cluster-bins: venv ## build (once, cached outside the repo) or find the control-plane binaries
	$(BIN)/python cluster/build.py

# KEDA v2.21.0's operator and metrics API server (the autoscaling suite runs them on the host),
# built once from the Go module proxy and cached beside the control plane's binaries; a warm run
# does nothing. Cold: ~710 CPU-s, ~6 min on 2 idle cores (21 min measured on a busy one).
keda-bins: venv ## build (once, cached outside the repo) KEDA's operator and metrics API server
	$(BIN)/python -m kubeforge_cluster.keda build

# NODES=real (root): + one real node (containerd, runc, kubelet, kube-proxy, CoreDNS) on a guarded
# pod network; its binaries are built once (cached). NODES=kwok (default): fake nodes only.
NODES ?= kwok
cluster: cluster-bins ## start the local control plane (NODES=real: with a real node) and print the KUBECONFIG line
	@if [ "$(NODES)" = real ]; then $(BIN)/python -m kubeforge_cluster.realnode build --apt && \
	  $(BIN)/python -m kubeforge_cluster.realnode up; else $(BIN)/python -m kubeforge_cluster up; fi

cluster-down: venv ## stop the local control plane (NODES=real: and the real node)
	@if [ "$(NODES)" = real ]; then $(BIN)/python -m kubeforge_cluster.realnode down; \
	  else $(BIN)/python -m kubeforge_cluster down; fi

# What the tests need besides binaries: promtool/prometheus + debootstrap (apt, as root), helm3,
# the kserve client's venv, the packed operator/server images; cached, a warm run takes seconds.
test-deps: venv cluster-bins ## prepare (once, cached) what `make test` needs: apt tools, helm3, kserve venv, images
	$(BIN)/python -m kubeforge_cluster.testdeps

# registry (distribution), crane, buildkitd + buildctl, actionlint: built once, cached.
ship-bins: venv ## build (once, cached) the shipping tools: registry, crane, BuildKit, actionlint
	$(BIN)/python -m kubeforge_cluster.shipbins

# The Dockerfiles built by BuildKit and pushed: REGISTRY=host:port of a running registry, else a
# loopback registry for the run (storage kept in ~/.cache/kubeforge/registry). TRAINER=1: + trainer.
images-push: venv ship-bins ## build the Dockerfiles with BuildKit and push them (+ the chart) to REGISTRY
	$(BIN)/python -m kubeforge_cluster.ship images $(if $(REGISTRY),--registry $(REGISTRY)) $(if $(TRAINER),--trainer)
	@if [ -n "$(REGISTRY)" ]; then $(BIN)/python -m kubeforge_cluster.ship chart --registry $(REGISTRY); fi

images: venv ## operator/trainer/server images without Docker (cluster/images/out; loaded into a running real node)
	$(BIN)/python cluster/images/build.py --import-if-running

kind: ## a kind cluster, for machines with Docker (not this one; there use `make cluster`)
	cluster/kind-up.sh

# NODES=real (root): on a real node: the chart's operator, the trainer and the server run as real
# pods from the project's images (built by `make images` when missing or stale, cached otherwise).
demo: venv cluster-bins ## the main job: install the chart, train, tune and serve on the local cluster (NODES=real: real pods)
	@if [ "$(NODES)" = real ]; then $(BIN)/python -m kubeforge_cluster.realnode build --apt && \
	  $(BIN)/python -m kubeforge_cluster.demo --nodes real; else $(BIN)/python -m kubeforge_cluster.demo; fi

bench: venv cluster-bins ## every benchmark; each prints a table
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build *.egg-info
