# fwcluster: `make demo` runs the main job on a local lab, `make test` runs every test.
# Both install what they need (tools/bootstrap.sh: apt packages and .venv).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# a hung test fails (pytest-timeout prints every thread's stack) instead of
# holding the run: no test needs 10 minutes (the lab's longest take ~2)
PYTEST := $(VENV)/bin/pytest -p no:cacheprovider --timeout=600 --timeout-method=thread
SEEDS ?= 2000
# seeds of the 16- and 32-node membership scenarios in test-sim (about 2 and
# 11 CPU-s per seed: about 30 s of wall time on 2 idle cores)
SEEDS16 ?= 12
SEEDS32 ?= 2
# seeds of each issue-18 scenario (long partition, hostile claims, clock
# step, duplicate node id) and of status-flap (issue 14) in test-sim: 0.2-0.5 CPU-s per seed (300 seeds
# each: 91, 60, 145, 82 CPU-s), about a minute for the four on 2 idle cores
SEEDS_HARDEN ?= 100
export PYTHONDONTWRITEBYTECODE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: bootstrap demo demo-lab demo-sim test test-lint test-unit test-sim test-lab test-lab16 test-ansible \
	test-kmod test-kmod-role test-bench-smoke bench bench-compare clean fuzz

bootstrap:
	@./tools/bootstrap.sh

# The main job: fresh systemd test hosts, ansible-playbook site.yml rolls out a
# 3-node cluster, traffic, the busiest node loses power, the verdict.
demo: bootstrap
	$(PY) -m testhosts demo

# The same failover story without Ansible: agents started directly in namespaces.
demo-lab: bootstrap
	./bin/demo

# The same story in the deterministic simulator (no root, no kernel).
demo-sim: bootstrap
	$(PY) -m availability_manager.sim.demo

test: bootstrap
	@./tools/run-tests.sh

test-lint: bootstrap
	$(VENV)/bin/ruff check agent lab bench testhosts
	$(VENV)/bin/ruff format --check agent lab bench testhosts
	cd agent && ../$(VENV)/bin/mypy availability_manager
	cd lab && ../$(VENV)/bin/mypy fwcluster_lab tests
	cd bench && ../$(VENV)/bin/mypy fwbench *.py tests
	$(VENV)/bin/mypy --config-file testhosts/pyproject.toml -p testhosts

test-unit: bootstrap
	$(PYTEST) -q -n 2 agent/tests -m "not sim and not lab"
	$(PYTEST) -q bench/tests -m "not lab"
	$(PYTEST) -q tools/tests
	$(PYTEST) -q -n 2 tests/unit

# The fuzz campaign at length (issue 18): the properties of
# agent/tests/test_fuzz.py with FUZZ_EXAMPLES examples each (make test runs
# them with 100). Pure Python, no root; minutes per 10,000 examples.
FUZZ_EXAMPLES ?= 20000
fuzz: bootstrap
	FWCLUSTER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTEST) -q agent/tests/test_fuzz.py

test-sim: bootstrap
	$(PYTEST) -q -n 2 agent/tests -m sim
	$(PY) -m availability_manager.sim --seeds $(SEEDS) --jobs 2
	$(PY) -m availability_manager.sim --seeds $(SEEDS16) --scenario membership16 --jobs 2
	$(PY) -m availability_manager.sim --seeds $(SEEDS32) --scenario membership32 --jobs 2
	for s in long-sync-partition hostile-claims clock-step duplicate-node-id status-flap step-back-in-handoff stall; do \
		$(PY) -m availability_manager.sim --seeds $(SEEDS_HARDEN) --scenario $$s --jobs 2 || exit 1; done

# Real kernels: network namespaces, nftables, conntrack. Needs root. Serial:
# the lab uses fixed namespace names.
test-lab: bootstrap
	$(PYTEST) -q agent/tests/lab -m lab
	cd lab && ../$(PYTEST) -q tests

# The set-up on a clean Debian 12 root (systemd-nspawn): bootstrap, the
# installers and the areas that run there. Needs root; see tools/test-fresh.sh.
.PHONY: test-fresh
test-fresh: bootstrap
	./tools/test-fresh.sh

# Sixteen real agents on this machine (issue 19): settle, kill, revive, drain
# under light traffic. Minutes on 2 cores, so not part of test-lab. Needs root.
test-lab16: bootstrap
	cd lab && FWCLUSTER_LAB16=1 ../$(PYTEST) -q tests/test_lab16.py

test-ansible: bootstrap
	./tools/ansible-tests.sh

test-kmod: bootstrap
	./kmod/run-tests.sh

# The clusterdev Ansible role run by ansible-playbook inside a TCG guest: about
# 40 minutes here, so not part of make test (which runs the role's refusal).
test-kmod-role: bootstrap
	ROLE_TEST_STEPS=first ./kmod/tools/run-role-test.sh

# Every benchmark's short version, so none of them rots (numbers not kept).
test-bench-smoke: bootstrap
	$(PY) bench/run_all.py --quick
	./tools/bench-compare.sh --quick

bench: bootstrap
	$(PY) bench/run_all.py

bench-compare: bootstrap
	./tools/bench-compare.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache kmod/build
