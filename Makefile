# The README's two commands: `make run` and `make test`. Each installs what it needs itself,
# on a fresh Debian machine that has only python3, make and apt-get.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-slow test-hunt bench-core lint clean postgresql

$(BIN)/python:
	@$(PY) -m venv --help >/dev/null 2>&1 && $(PY) -c 'import ensurepip' 2>/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

run: $(VENV)/.installed
	$(BIN)/sluice demo

# The campaign store's conformance suite runs on PostgreSQL too: tests start a real server from
# Debian's `postgresql` package (initdb/pg_ctl on a free loopback port), installed here if missing.
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))

postgresql:
	@[ -n "$(PG_INITDB)" ] || { $(SUDO) apt-get update && $(SUDO) apt-get install -y postgresql; }

# Two pytest-xdist workers, one file per worker at a time (a file's fixtures and servers stay
# together): about half the serial time on two cores.
test: $(VENV)/.installed postgresql
	$(BIN)/lint-imports --config pyproject.toml
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The long runs (pytest marker `slow`): kill -9s during a 100,000-message job, a webhook run and
# a 100,000-run flow, a large schemathesis run. Each test bounds its own time; `timeout` bounds the whole command.
test-slow: $(VENV)/.installed postgresql
	timeout 3600 $(BIN)/python -m pytest -m slow -s

# The property tests again with fresh random seeds (make test draws the same examples every run):
# ROUNDS rounds, each cut off after 15 minutes. A failure prints the example and its reproduce blob.
ROUNDS ?= 3
test-hunt: $(VENV)/.installed postgresql
	for i in $$(seq $(ROUNDS)); do \
	  SLUICE_HYPOTHESIS=hunt timeout 900 $(BIN)/python -m pytest -n 2 --dist loadfile \
	    $$(grep -rl --include='test_*.py' 'from hypothesis' tests) || exit 1; done

bench-core: $(VENV)/.installed
	$(BIN)/sluice bench core

clean:
	rm -rf $(VENV) build *.egg-info
