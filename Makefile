# One entry point. Every target sets up .venv/ first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(abspath ../shared/data)
export DATA_DIR
# Lock files (make lock): requirements/serve.lock = the serving set (numpy, onnxruntime, tqdm, bentoml, redis),
# universal (Python 3.11 and the 3.12 Docker images); requirements/dev.lock = everything setup installs, for
# Python 3.11 on Linux x86_64, constrained by serve.lock. torch is locked to the local CPU wheel in $(TORCH_WHEELS)
# (an unpinned torch pulls several GB of CUDA packages).
TORCH_PIN := torch==2.13.0+cpu
TORCH_WHEELS := /opt/wheels
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
LOCK_FLAGS ?=
# ONNX Runtime build that setup installs: auto = gpu when `nvidia-smi -L` lists a GPU, else cpu; override with
# make setup ORT=cpu|gpu. gpu = onnxruntime-gpu of the locked onnxruntime version (same dependencies; it needs
# the CUDA 13 + cuDNN 9 libraries on the machine, docs/deploy.md).
ORT ?= auto
ifeq ($(ORT),auto)
ORT_KIND := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo gpu || echo cpu)
else
ORT_KIND := $(ORT)
endif

.PHONY: setup register lock lint test test-fast serve cluster loadtest-cluster train-classifier search-classifier train-generator export loadtest soak bench k8s clean

setup: $(VENV)/.installed $(VENV)/.ort-$(ORT_KIND)

$(VENV)/.installed: requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# every version from the lock; torch there is $(TORCH_PIN), the local CPU wheel (no CUDA packages)
	$(PY) -m pip install -r requirements/dev.lock
	$(PY) -m pip install --no-deps -e .
	touch $@

# the ONNX Runtime build of ORT_KIND at the locked version: both packages hold the same `onnxruntime` module, so
# the other one is removed first; redone after every install of the lock (which brings back onnxruntime)
$(VENV)/.ort-%: $(VENV)/.installed
	@v=$$(sed -n 's/^onnxruntime==//p' requirements/dev.lock); case "$*" in \
	  gpu) echo "ORT=gpu: onnxruntime-gpu==$$v instead of onnxruntime"; \
	       $(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu && \
	       $(PY) -m pip install -q --no-deps "onnxruntime-gpu==$$v" || exit 1 ;; \
	  cpu) if $(PY) -m pip show -q onnxruntime-gpu 2>/dev/null; then echo "ORT=cpu: onnxruntime==$$v"; \
	         $(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu && \
	         $(PY) -m pip install -q --no-deps "onnxruntime==$$v" || exit 1; fi ;; \
	  *) echo "error: ORT=$*: expected auto, cpu or gpu" >&2; exit 2 ;; \
	esac
	rm -f $(VENV)/.ort-*
	touch $@

# the exported models into BentoML's model store ($BENTOML_HOME/models), tagged by their manifests; idempotent
# and quick once registered (docs/deploy.md). Another folder: make register MODELS=path/to/exported_models
MODELS ?= exported_models
register: setup
	$(PY) -m serving.model_store register --models $(MODELS)

# Regenerates both lock files with uv==$(UV_VERSION), keeping the current pins where the ranges in pyproject.toml
# allow. Upgrades: make lock LOCK_FLAGS="--upgrade-package bentoml" (or "-P bentoml==1.4.41", or --upgrade).
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "uv==$(UV_VERSION)"
	$(UV) pip compile pyproject.toml --extra serve --universal --python-version 3.11 \
	    --custom-compile-command "make lock" $(LOCK_FLAGS) -o requirements/serve.lock >/dev/null
	echo "$(TORCH_PIN)" | $(UV) pip compile pyproject.toml - --extra train --extra serve --extra test \
	    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -c requirements/serve.lock \
	    --find-links $(TORCH_WHEELS) --emit-find-links --custom-compile-command "make lock" $(LOCK_FLAGS) \
	    -o requirements/dev.lock >/dev/null
	# the GPU image (Dockerfile) installs onnxruntime-gpu of the locked onnxruntime version: check it exists
	sed 's/^onnxruntime==/onnxruntime-gpu==/' requirements/serve.lock \
	  | $(UV) pip compile - --python-version 3.12 --python-platform x86_64-unknown-linux-gnu -q >/dev/null \
	  || { echo "error: no onnxruntime-gpu release matches the locked onnxruntime;" \
	            "pin one that has: make lock LOCK_FLAGS='-P onnxruntime==X.Y.Z'"; exit 1; }
	# requirements/serve-gpu.lock (the CUDA Bento, bentofile-cuda.yaml): the same set, onnxruntime-gpu for onnxruntime
	{ echo "# serve.lock with onnxruntime-gpu instead of onnxruntime, same version and pins (make lock)"; \
	  sed 's/^onnxruntime==/onnxruntime-gpu==/' requirements/serve.lock; } > requirements/serve-gpu.lock

# ruff (lint rules and format, [tool.ruff]) and deptry ([tool.deptry]); CI runs it before the tests (.ci/run).
# deptry's second pass sees the shipped code only, with `test` as dev dependencies: it fails (DEP004) when
# training/, runtime/ or serving/ imports a package that only the `test` extra declares.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/deptry .
	$(VENV)/bin/deptry training runtime serving --optional-dependencies-dev-groups test --ignore DEP001,DEP002,DEP003

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# registers the exported models first (a no-op once they are), then serves them from the model store
serve: register
	$(VENV)/bin/bentoml serve

train-classifier: setup
	$(PY) -m training train-classifier --data-dir $(DATA_DIR)/bbc

search-classifier: setup
	$(PY) -m training search-classifier --data-dir $(DATA_DIR)/bbc

train-generator: setup
	$(PY) -m training train-generator --text $(DATA_DIR)/sherlock/canon.txt

# make loadtest PROFILE=capacity: ~80% of the measured /classify capacity, open loop, + 16 streams (loadtests/run.py)
loadtest: setup
	$(PY) -m loadtests.run $(if $(PROFILE),--profile $(PROFILE))

# memory soak: 100,000 mixed requests against a real server, RSS CSV + PNG under results/soak-<stamp>/;
# fails on > 20 MB growth or > 0.2 KB/request after warm-up. More: make soak SOAK_FLAGS="--requests 300000"
SOAK_FLAGS ?=
soak: setup
	$(PY) -m loadtests.soak $(SOAK_FLAGS)

bench: setup
	$(PY) -m loadtests.bench

# a local deployment in the foreground: redis-server + REPLICAS x bentoml serve + nginx on PORT (deploy/cluster.py,
# docs/cluster.md); Ctrl-C stops it all (the replicas drain first). Needs Debian's redis-server and nginx.
REPLICAS ?= 3
PORT ?= 8080
cluster: setup
	$(PY) -m deploy.cluster --replicas $(REPLICAS) --port $(PORT)

# locust in distributed mode (a master, two worker processes) against that cluster's nginx, 60 s of the default
# mixed profile; HTML and CSV under results/loadtest-cluster-<stamp>/ (loadtests/cluster_load.py)
loadtest-cluster: setup
	$(PY) -m loadtests.cluster_load --replicas $(REPLICAS)

# deploy/k8s/rendered/<name>.yaml: every overlay and example of deploy/k8s, rendered by `kubectl kustomize` and
# committed, so that the tests validate the manifests without kubectl (tests/deploy/test_k8s.py, which also fails
# on a stale render when kubectl is there). Run after any change under deploy/k8s.
k8s:
	rm -f deploy/k8s/rendered/*.yaml
	for d in deploy/k8s/overlays/* deploy/k8s/examples/*; do \
	  { echo "# generated by make k8s; do not edit (kubectl kustomize $$d)"; kubectl kustomize $$d; } \
	    > deploy/k8s/rendered/$$(basename $$d).yaml || exit 1; \
	done

clean:
	rm -rf $(VENV) runs results .pytest_cache
