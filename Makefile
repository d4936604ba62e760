# make demo / make test are all a new user needs: each builds .venv from pyproject.toml when missing.
# The first interpreter that actually runs and is 3.11+: a pyenv shim answers `command -v` for
# versions it cannot start, so asking the name is not enough.
PYTHON ?= $(shell for p in python3.12 python3.11 python3.13 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit lint format test-slow test-all bench clean constraints constraints-check wheel

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "scanner-agent needs Python 3.11 or newer (python3.12, python3.11 or python3)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "scanner-agent needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $@

## The daemon's main job on embedded defaults (local folders, CSV sheet, Prefect's embedded API).
demo: $(STAMP)
	$(BIN)/scanner-agent demo --config config/demo.toml

## The test suite CI runs (heavier suites: make test-slow).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --timeout=600

## The fast layer: core/ and the pipeline with in-memory fakes; no Prefect server, subprocess or network.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit -p no:cacheprovider

## ruff (lint and format) over the whole tree, mypy over the package (strict on core/).
lint: $(STAMP)
	$(BIN)/ruff check scanner_agent tests bench
	$(BIN)/ruff format --check scanner_agent tests bench
	$(BIN)/mypy scanner_agent

## Rewrite the tree in the project's format and apply ruff's safe fixes.
format: $(STAMP)
	$(BIN)/ruff format scanner_agent tests bench
	$(BIN)/ruff check --fix scanner_agent tests bench

## Heavier tests: fault injection with many kills, long soaks.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout=1800

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=1800

## Benchmarks: each prints its figures and the ratio to a baseline measured in the same run.
bench: $(STAMP)
	$(BIN)/python -m bench.transfer
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.burst
	$(BIN)/python -m bench.idle

## Pin every distribution (agent, Prefect server, test and lint tools) in constraints.txt, resolved
## from pyproject.toml by pip (scripts/make_constraints.py). Run after changing a range; commit the result.
constraints: $(STAMP)
	$(BIN)/python scripts/make_constraints.py
	$(BIN)/python scripts/make_constraints.py --check

## Fail when constraints.txt pins a version outside pyproject.toml's ranges (CI runs it).
constraints-check: $(STAMP)
	$(BIN)/python scripts/make_constraints.py --check

## The wheel (with the systemd unit and example config as package data) in dist/.
wheel: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf demo-run .pytest_cache
