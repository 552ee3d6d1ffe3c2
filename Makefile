# One entry point for people and CI. `make setup` builds .venv with pinned packages.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint typecheck check bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	bash scripts/setup.sh $(VENV)

quickstart: setup
	$(BIN)/labelzip quickstart

lint:
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck:
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest -q -m "not slow" -n 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
