# Quickstart targets. Each sets up .venv from nothing (Python 3.10-3.12 with venv and pip).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Test processes at once (pytest-xdist); tests of one file stay in one process, so its
# module-scoped runs are made once.
TEST_WORKERS ?= 2

.PHONY: demo test test-fast compile clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## demo: train, evaluate and quantize a classifier of scikit-learn's handwritten digits (offline)
demo: $(STAMP)
	$(BIN)/tlpipe demo --output demo-output

## test: the whole suite, end-to-end local pipeline runs included
test: $(STAMP)
	$(BIN)/python -m pytest -ra --durations=25 -n $(TEST_WORKERS) --dist loadscope

## test-fast: everything but the whole pipeline runs (e2e) and the slow tier: the core, CLI
## errors, compile, cluster launchers and fakes, in about a seventh of `make test`'s time
test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not slow and not e2e" -n $(TEST_WORKERS) --dist loadscope

compile: $(STAMP)
	$(BIN)/tlpipe compile -o pipeline.yaml

clean:
	rm -rf $(VENV) demo-output runs pipeline.yaml
