# riskset: `make run` sets everything up and starts riskset; `make test` runs every check.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench lint load fuzz audit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-ops: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,ops]'
	@touch $@ $(VENV)/.installed-test $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/riskset serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff check riskset tests tools
	$(BIN)/mypy
	$(BIN)/bandit -q -r riskset tools

test: lint
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python tools/bench.py

# 50 clients for 60 s against a fresh server on loopback; prints rate, latency, errors, memory.
load: $(VENV)/.installed-ops
	$(BIN)/python tools/load.py

# Coverage-guided fuzzing of the reader and the engine for a bounded time (FUZZ_SECONDS).
FUZZ_SECONDS ?= 120
fuzz: $(VENV)/.installed-ops
	$(BIN)/python tools/fuzz_reader.py -max_total_time=$(FUZZ_SECONDS)

# Known vulnerabilities in the installed dependencies (needs the network to PyPI's advisories;
# --strict: a dependency that could not be checked fails the audit instead of passing it).
audit: $(VENV)/.installed-ops
	$(BIN)/pip-audit --skip-editable --strict

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
