# One entry point. Every target sets up .venv/ first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(abspath ../shared/data)
export DATA_DIR
TORCH_PIN := torch==2.13.0

.PHONY: setup test test-fast serve train-classifier search-classifier train-generator export loadtest bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# pinned first: an unpinned torch would pull several GB of CUDA packages
	$(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[train,serve,test]" "$(TORCH_PIN)"
	touch $@

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

serve: setup
	$(VENV)/bin/bentoml serve

train-classifier: setup
	$(PY) -m training train-classifier --data-dir $(DATA_DIR)/bbc

search-classifier: setup
	$(PY) -m training search-classifier --data-dir $(DATA_DIR)/bbc

train-generator: setup
	$(PY) -m training train-generator --text $(DATA_DIR)/sherlock/canon.txt

loadtest: setup
	$(PY) -m loadtests.run

bench: setup
	$(PY) -m loadtests.bench

clean:
	rm -rf $(VENV) runs results .pytest_cache
