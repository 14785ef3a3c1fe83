# Tributary: the two commands are `make up` (run the platform) and `make test` (run the tests).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup system-deps up down status settings test test-unit lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: system-deps $(STAMP) ## Install system packages, .venv, the Kafka broker (Maven) and ECharts (npm); idempotent
	@$(BIN)/python -c 'import sys; from tributary.stack.kafka_install import main; sys.exit(main())'
	@scripts/install_js.sh

system-deps:
	@scripts/system_deps.sh

$(STAMP): pyproject.toml constraints.txt scripts/install_python.sh
	@scripts/install_python.sh
	@touch $@

up: setup ## Start the platform: services, bootstrap, streaming jobs (via the supervisor), demo producer
	@$(BIN)/tributary up

down: ## Stop every process `make up` started
	@if [ -x $(BIN)/tributary ]; then $(BIN)/tributary down; else echo "nothing to stop (.venv missing)"; fi

status: ## Show the state of each component
	@$(BIN)/tributary status

settings: ## Show every setting, its value and meaning
	@$(BIN)/tributary settings

test: setup ## Install what is missing and run the whole test suite
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup ## Only the fast unit tests
	@$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check) and mypy
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy

format: setup ## Apply ruff's fixes and formatting
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

bench: setup ## Benchmarks (print events/s, p95 latency, COPY ceiling); takes ~10 minutes
	@$(BIN)/python bench/user_events.py

clean: down ## Stop the stack and remove its state (.state/) — data of the embedded stack is lost
	rm -rf .state
