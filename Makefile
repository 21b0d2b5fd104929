# The two commands the README promises: `make run` and `make test`. Both set up everything they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services stop lint bench clean

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

services: $(STAMP)
	@bash scripts/services.sh start

run: services
	$(BIN)/tidings serve

test: services
	@bash scripts/install-system.sh --browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

stop:
	@bash scripts/services.sh stop

bench: services
	@bash scripts/install-system.sh --bench
	$(BIN)/python bench/auth_hot_path.py

clean: stop
	rm -rf $(VENV) .data .mypy_cache .pytest_cache .ruff_cache
