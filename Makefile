# aistack — make help lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
# uv is installed on first use when missing (pip, from PyPI)
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen
export UV_LINK_MODE ?= copy

.PHONY: help bootstrap sync run test lint fmt typecheck importlint compose-check pytest bench soak audit migrate docs clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

bootstrap: ## Install uv if missing
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

sync: bootstrap ## Install the locked dependencies into .venv
	@$(UV) sync --frozen

run: sync ## Start the whole stack (embedded Postgres and Redis unless DATABASE_URL / REDIS_URL are set)
	@$(RUN) python -m deploy.local.run

test: sync lint typecheck importlint compose-check pytest ## Every quality gate and the test suite (what CI runs)

lint: sync ## ruff lint and format check
	@$(RUN) ruff check .
	@$(RUN) ruff format --check .

fmt: sync ## Format and autofix
	@$(RUN) ruff format .
	@$(RUN) ruff check --fix .

typecheck: sync ## mypy
	@$(RUN) mypy libs gateway services deploy tests

importlint: sync ## import-linter contracts (services never import each other; libs imports no service)
	@$(RUN) lint-imports

compose-check: sync ## Validate compose.yaml against the Compose specification
	@$(RUN) python -m deploy.validate_compose compose.yaml

pytest: sync ## The test suite against real PostgreSQL and Redis
	@$(RUN) pytest -q $(PYTEST_ARGS)

bench: sync ## Benchmarks (prints figures; not part of make test)
	@$(RUN) python -m tests.bench.run $(BENCH_ARGS)

soak: sync ## A mixed load through a real stack for DURATION seconds (default 120): RSS growth, errors, p99 over time
	@$(RUN) python -m tests.bench.soak --duration $(or $(DURATION),120) $(SOAK_ARGS)

audit: sync ## Known vulnerabilities in uv.lock (pip-audit; needs the vulnerability service; not part of make test)
	@$(RUN) python -m deploy.audit

migrate: sync ## Apply every service's migrations to DATABASE_URL
	@$(RUN) python -m libs.migrations upgrade all

docs: sync ## Regenerate the README's configuration table from the settings classes
	@$(RUN) python -m deploy.config_table --write

clean: ## Remove the embedded databases' data and caches
	rm -rf .data .mypy_cache .ruff_cache .pytest_cache
