# optimodel developer entry points. Every target installs what it needs by itself.
#
#   make demo              the main job locally: build MiniLM, serve it with Triton, send traffic
#   make demo-cluster      the main job on a real cluster: helm install, build pod, Triton pods,
#                          queue-depth autoscaling and a rollout under load (real node, no GPU)
#   make test              the whole test suite (installs Python deps and control-plane binaries)
#   make dev-cluster       a local control plane with kwok GPU node pools; kubeconfig path printed
#                          (REAL_NODE=1: plus a real containerd/kubelet node with the project's images)
#   make dev-cluster-down  stop it and remove its state
#   make images            build the project's images (Dockerfile targets, daemonless; cached)
#   make manifests         regenerate crds/, the chart's generated files and deploy/ from the code

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# The folder operator/ must never shadow the standard library's `operator` module.
export PYTHONSAFEPATH := 1
OPTIMODEL_CACHE ?= $(HOME)/.cache/optimodel
export OPTIMODEL_CACHE
DEV_CLUSTER_STATE ?= $(OPTIMODEL_CACHE)/dev-cluster
PYTEST_ARGS ?=
REAL_NODE ?=

.PHONY: help demo demo-cluster test test-unit test-chart test-node binaries node-deps images python-env dev-cluster dev-cluster-down crd manifests manifests-check bench

help:
	@sed -n '2,13p' Makefile

python-env:
	@hack/python-env.sh

binaries:
	@hack/install-binaries.sh >/dev/null

node-deps:
	@hack/install-node-deps.sh >/dev/null

images: node-deps
	@python3 hack/images.py build

demo:
	@venv=$$(hack/python-env.sh); cd / && "$$venv/bin/optimodel" demo

demo-cluster:
	@venv=$$(hack/python-env.sh); plot=$$(OPTIMODEL_EXTRAS=plot hack/python-env.sh); \
	hack/install-binaries.sh >/dev/null; hack/install-prometheus.sh >/dev/null; hack/install-minio.sh >/dev/null; \
	hack/install-node-deps.sh >/dev/null; hack/install-autoscalers.sh >/dev/null; python3 hack/images.py build >/dev/null; \
	cd / && "$$venv/bin/python" "$(CURDIR)/hack/demo_cluster.py" --plot-python "$$plot/bin/python"

test:
	@venv=$$(hack/install-all.sh); \
	cd "$(CURDIR)" && "$$venv/bin/pytest" $(PYTEST_ARGS)

test-unit:
	@venv=$$(hack/python-env.sh); "$$venv/bin/pytest" -m "not cluster and not triton and not slow and not node" $(PYTEST_ARGS)

dev-cluster: binaries
	@$(if $(REAL_NODE),hack/install-node-deps.sh >/dev/null && python3 hack/images.py build >/dev/null &&) \
	python3 hack/localcluster.py up --state "$(DEV_CLUSTER_STATE)" $(if $(REAL_NODE),--real-node)
	@echo "export KUBECONFIG=$(DEV_CLUSTER_STATE)/kubeconfig"
	@echo "kubectl: $$(hack/install-binaries.sh 2>/dev/null)/kubectl"

dev-cluster-down:
	@python3 hack/localcluster.py down --state "$(DEV_CLUSTER_STATE)"

crd: manifests

manifests:
	@venv=$$(hack/python-env.sh); cd / && "$$venv/bin/optimodel" crd > "$(CURDIR)/crds/optimizedmodel.yaml" \
	  && "$$venv/bin/python" "$(CURDIR)/hack/render-chart-artifacts.py" \
	  && python3 "$(CURDIR)/hack/images.py" requirements

manifests-check:
	@venv=$$(hack/python-env.sh); cd / && "$$venv/bin/python" "$(CURDIR)/hack/render-chart-artifacts.py" --check

test-node:
	@venv=$$(hack/python-env.sh); hack/install-binaries.sh >/dev/null; hack/install-node-deps.sh >/dev/null; \
	python3 hack/images.py build >/dev/null; "$$venv/bin/pytest" tests/node $(PYTEST_ARGS)

test-chart:
	@venv=$$(hack/python-env.sh); hack/install-binaries.sh >/dev/null; "$$venv/bin/pytest" tests/chart $(PYTEST_ARGS)
