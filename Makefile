# fwcluster: `make demo` runs the main job on a local lab, `make test` runs every test.
# Both install what they need (tools/bootstrap.sh: apt packages and .venv).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
SEEDS ?= 2000
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: bootstrap demo test test-lint test-unit test-sim test-lab test-kmod test-ansible bench clean

bootstrap:
	@./tools/bootstrap.sh

demo: bootstrap
	$(PY) -m availability_manager.sim.demo

test: bootstrap
	@./tools/run-tests.sh

test-lint: bootstrap
	$(VENV)/bin/ruff check agent bench
	$(VENV)/bin/ruff format --check agent bench
	cd agent && ../$(VENV)/bin/mypy availability_manager

test-unit: bootstrap
	$(PYTEST) -q agent/tests -m "not sim and not lab" -n 2

test-sim: bootstrap
	$(PYTEST) -q agent/tests -m sim
	$(PY) -m availability_manager.sim --seeds $(SEEDS) --jobs 2

bench: bootstrap
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
