# tc-sentinel: ThreatConnect -> Microsoft Sentinel as an Airflow 3 DAG.
# `make demo` and `make test` are all a newcomer needs; both bootstrap .venv from the committed lock.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
SINK ?= graph
BUILD := build

.PHONY: help venv demo test lint unit integration dags bench bench-smoke scheduler-test celery-test compose-check lock clean

help:
	@echo "make demo       run the DAG once against the bundled simulators (SINK=graph|sentinel|defender, or several: SINK=sentinel,defender)"
	@echo "make test       ruff + the whole pytest suite (what CI runs)"
	@echo "make bench      benchmark suite (table + $(BUILD)/bench/results.json)"
	@echo "make scheduler-test  real scheduler + backfill on a private PostgreSQL (2-4 min; part of make test)"
	@echo "make celery-test     CeleryExecutor cluster: Redis, PostgreSQL, two workers, one request budget (part of make test)"
	@echo "make compose-check   validate docker-compose.yaml with the real Compose binary (part of make test)"
	@echo "make lock       re-resolve requirements*.lock from requirements*.txt"
	@echo "make clean      remove .venv and build/"

venv: $(STAMP)

# --compile-bytecode: every Airflow process (each `dags test`, scheduler, worker and task) imports thousands of
# modules; where PYTHONDONTWRITEBYTECODE is set no .pyc is ever written, and each start compiles them all again
# (`airflow version`: 6.7 s without, 3.4 s with).
$(STAMP): requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip sync --python $(PY) --compile-bytecode requirements-dev.lock
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m devtools.demo --sink $(SINK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

bench-smoke: $(STAMP)
	$(PY) -m bench --smoke

scheduler-test: $(STAMP)
	$(PY) -m pytest -m scheduler tests/scheduler

celery-test: $(STAMP)
	$(PY) -m pytest -m celery tests/celery

compose-check: $(STAMP)
	$(PY) -m pytest tests/deploy

lock:
	$(VENV)/bin/uv pip compile -q --python-version 3.11 --generate-hashes requirements.txt -o requirements.lock
	$(VENV)/bin/uv pip compile -q --python-version 3.11 --generate-hashes requirements-dev.txt -o requirements-dev.lock

clean:
	rm -rf $(VENV) $(BUILD) .pytest_cache .ruff_cache
