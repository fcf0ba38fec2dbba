# optimodel developer entry points. Every target installs what it needs by itself.
#
#   make demo              the main job locally: build MiniLM, serve it with Triton, send traffic
#   make test              the whole test suite (installs Python deps and control-plane binaries)
#   make dev-cluster       a local control plane with kwok GPU node pools; kubeconfig path printed
#   make dev-cluster-down  stop it and remove its state
#   make manifests         regenerate crds/, the chart's generated files and deploy/ from the code

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# The folder operator/ must never shadow the standard library's `operator` module.
export PYTHONSAFEPATH := 1
OPTIMODEL_CACHE ?= $(HOME)/.cache/optimodel
export OPTIMODEL_CACHE
DEV_CLUSTER_STATE ?= $(OPTIMODEL_CACHE)/dev-cluster
PYTEST_ARGS ?=

.PHONY: help demo test test-unit test-chart binaries python-env dev-cluster dev-cluster-down crd manifests manifests-check bench

help:
	@sed -n '2,9p' Makefile

python-env:
	@hack/python-env.sh

binaries:
	@hack/install-binaries.sh >/dev/null

demo:
	@venv=$$(hack/python-env.sh); cd / && "$$venv/bin/optimodel" demo

test:
	@venv=$$(hack/python-env.sh); \
	hack/install-binaries.sh >/dev/null; \
	hack/install-prometheus.sh >/dev/null; \
	hack/install-minio.sh >/dev/null; \
	cd "$(CURDIR)" && "$$venv/bin/pytest" $(PYTEST_ARGS)

test-unit:
	@venv=$$(hack/python-env.sh); "$$venv/bin/pytest" -m "not cluster and not triton and not slow" $(PYTEST_ARGS)

dev-cluster: binaries
	@python3 hack/localcluster.py up --state "$(DEV_CLUSTER_STATE)"
	@echo "export KUBECONFIG=$(DEV_CLUSTER_STATE)/kubeconfig"
	@echo "kubectl: $$(hack/install-binaries.sh 2>/dev/null)/kubectl"

dev-cluster-down:
	@python3 hack/localcluster.py down --state "$(DEV_CLUSTER_STATE)"

crd: manifests

manifests:
	@venv=$$(hack/python-env.sh); cd / && "$$venv/bin/optimodel" crd > "$(CURDIR)/crds/optimizedmodel.yaml" \
	  && "$$venv/bin/python" "$(CURDIR)/hack/render-chart-artifacts.py"

manifests-check:
	@venv=$$(hack/python-env.sh); cd / && "$$venv/bin/python" "$(CURDIR)/hack/render-chart-artifacts.py" --check

test-chart:
	@venv=$$(hack/python-env.sh); hack/install-binaries.sh >/dev/null; "$$venv/bin/pytest" tests/chart $(PYTEST_ARGS)
