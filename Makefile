# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
# Each creates .venv when it is missing. torch is pinned to the local CPU build (see constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.glccl-installed

.PHONY: demo test test-all venv lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glccl demo

# Default suite: everything that needs no GPU (Ray and MLflow tests included), under 20 minutes on 2 cores.
test: $(STAMP)
	$(PY) -m pytest -m "not gpu" -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check glccl pipelines sweeps cluster benchmarks tests

clean-venv:
	rm -rf $(VENV)
