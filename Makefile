# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
LLM_PORT ?= 8001

# First interpreter >= 3.12 (Django 6.1 needs it): python3.13, python3.12, then pyenv's.
FIND_PYTHON = for c in python3.14 python3.13 python3.12 \
    $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
  if "$$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then echo "$$c"; break; fi; \
done
# Sets DATABASE_URL for the rest of a recipe line (starts PostgreSQL if needed).
WITH_DB = export DATABASE_URL="$$(bash .ci/postgres.sh)" &&

.PHONY: help venv run test lint format db seed bench bench-relay chaos clean

help:
	@echo "make run    set up everything and start web, relay, worker (and the fake LLM)"
	@echo "make test   set up what the tests need and run them"
	@echo "make lint   ruff check and format check"
	@echo "make bench  benchmarks (writes docs/BENCHMARKS.md)   make chaos  fault-injection suite"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@py="$$($(FIND_PYTHON))"; \
	if [ -z "$$py" ]; then echo "error: no Python >= 3.12 found (tried python3.13, python3.12 and pyenv's versions); install Python 3.12 or newer" >&2; exit 1; fi; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	  echo "creating $(VENV) with $$py"; rm -rf $(VENV); "$$py" -m venv $(VENV); fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

db: venv
	@$(WITH_DB) $(PY) manage.py migrate --noinput -v 0 && echo "database ready: migrated"

seed: db
	@$(WITH_DB) $(PY) manage.py seed_demo

run: venv
	@$(WITH_DB) $(PY) manage.py migrate --noinput -v 0 && $(PY) manage.py seed_demo && \
	procs="web relay worker"; \
	if [ -z "$${OPENAI_API_KEY:-}$${OPENAI_BASE_URL:-}" ]; then \
	  echo "no OPENAI_API_KEY/OPENAI_BASE_URL: using the fake OpenAI-compatible server on port $(LLM_PORT)"; \
	  export OPENAI_BASE_URL="http://127.0.0.1:$(LLM_PORT)/v1" OPENAI_API_KEY=fake-key; procs="$$procs llm"; fi; \
	export PORT=$(PORT) LLM_PORT=$(LLM_PORT) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" Q_WORKERS="$${Q_WORKERS:-4}"; \
	echo "owners' page: http://127.0.0.1:$(PORT)/   (Ctrl-C stops everything)"; \
	exec $(VENV)/bin/honcho start $$procs

test: venv
	@bash .ci/system-deps.sh chromium fonts-liberation
	@$(WITH_DB) $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

BENCH_DB = $${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/reviews_bench}

bench: venv
	@bash .ci/system-deps.sh wrk postgresql-client
	@export DATABASE_URL="$(BENCH_DB)" && $(WITH_DB) $(PY) bench/run.py $(if $(QUICK),--quick) $(BENCH_ARGS)

bench-relay: venv
	@export DATABASE_URL="$(BENCH_DB)" && $(WITH_DB) $(PY) bench/run.py --only relay $(if $(QUICK),--quick)

chaos: venv
	@bash .ci/system-deps.sh postgresql
	@$(PY) bench/chaos.py $(if $(QUICK),--quick) $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
