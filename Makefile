# The two commands the README promises: `make run` and `make test`. Both set up everything they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services stop lint bench clean

# A strict editable install: tidings.* is a tree of links to these folders, which mypy can follow (it cannot follow
# the import hook of a lenient one). Adding or removing a module changes its folder, which reinstalls the links.
PACKAGE_DIRS := $(shell find server handlers documents templates static -type d -not -name __pycache__)

$(STAMP): setup.py $(PACKAGE_DIRS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]' --config-settings editable_mode=strict
	@touch $(STAMP)

services: $(STAMP)
	@bash scripts/services.sh start

# In development, a generated JWT secret is kept in .data/ (mode 0600), so restarting keeps everyone's sessions.
run: services
	JWT_SECRET_FILE=$${JWT_SECRET_FILE:-.data/jwt-secret} $(BIN)/tidings serve

test: services
	@bash scripts/install-system.sh --browser --ops
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd scripts/ferretdb && $${GO:-$$(command -v go || echo /usr/local/go/bin/go)} test ./...
	@# Pure code needs no service: its tests pass with MongoDB and Redis unreachable.
	MONGODB_URL=mongodb://127.0.0.1:1 REDIS_URL=redis://127.0.0.1:1 $(BIN)/pytest -m unit -q -p no:cacheprovider
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

stop:
	@bash scripts/services.sh stop

bench: services
	@bash scripts/install-system.sh --bench
	$(BIN)/python bench/auth_hot_path.py

# A PostgreSQL cluster that could not live in .data/ (scripts/services.sh) is removed with the link to it.
clean: stop
	@target=$$(readlink -f .data/postgresql 2>/dev/null || true); \
	if [ -L .data/postgresql ] && [ "$${target#/var/lib/tidings-pg/}" != "$$target" ]; then rm -rf "$$target"; fi
	rm -rf $(VENV) .data .mypy_cache .pytest_cache .ruff_cache
