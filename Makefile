# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
# Each creates .venv when it is missing. torch is pinned to the local CPU build (see constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.glccl-installed

.PHONY: demo test test-all test-gpu venv lint clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glccl demo

# Default suite: every tier but `slow` and `gpu` (real local Ray, Ray Train, Tune, a 2-node cluster and MLflow
# included), under 15 minutes on 2 cores. `make test-all` adds the slow tests: failure recovery (cluster node loss, a
# killed worker, stopped runs and sweeps resumed, scheduler-stopped trials), a training run's socket audit and the
# ViT-B/32 weight round trips.
test: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow" -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "not gpu" -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

# The gpu tier alone (CUDA against the CPU reference; tests/glccl/test_gpu.py): needs a CUDA build of torch and a GPU, and
# skips its tests where none is visible.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check glccl pipelines sweeps cluster benchmarks tests

clean-venv:
	rm -rf $(VENV)
