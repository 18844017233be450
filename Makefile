# Qiao — the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install install-test lint typecheck bench reliability clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

## Run the demo city on the embedded SQLite default (Ctrl-C to stop).
demo: install
	$(BIN)/qiao demo

## Install what the tests need and run them all (lint and type checks included).
test: install-test
	$(BIN)/ruff check qiao tests bench reliability
	$(BIN)/ruff format --check qiao tests bench reliability
	$(BIN)/mypy qiao
	$(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check qiao tests bench reliability
	$(BIN)/mypy qiao

## The reliability and security proof suite in full (20 kill rounds, a 10-minute soak,
## 37,000 fuzz cases; about 26 minutes on 2 cores): prints a table of figures, see RELIABILITY.md.
## `make test` runs its short profile.
reliability: install-test
	QIAO_RELIABILITY=full $(BIN)/pytest -q reliability
	$(BIN)/python -m reliability.report

## Benchmarks (need Debian's `wrk`): prints JSON, see BENCHMARKS.md.
bench: install-test
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/exchange.py

clean:
	rm -rf $(VENV) .qiao-demo .pytest_cache .mypy_cache .ruff_cache
