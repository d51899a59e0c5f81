# Two commands: `make run` brings the product up (web + worker, LAUNCHER=local, SQLite); `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PORT

.PHONY: run test lint format

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Written once: a generated SECRET_KEY and admin password, DEBUG=1. Delete .env to start again.
.env: | .env.example
	$(BIN)/python -c "import re, secrets, pathlib; t = pathlib.Path('.env.example').read_text(); \
	t = re.sub(r'(?m)^SECRET_KEY=.*$$', 'SECRET_KEY=' + secrets.token_urlsafe(50), t); \
	t = re.sub(r'(?m)^DEBUG=.*$$', 'DEBUG=1', t); \
	t = re.sub(r'(?m)^DEV_ADMIN_PASSWORD=.*$$', 'DEV_ADMIN_PASSWORD=' + secrets.token_urlsafe(12), t); \
	pathlib.Path('.env').write_text(t)"

# SITE_URL follows PORT unless the environment or .env sets it. It is exported here, to every process, because honcho
# gives each process its own PORT (the worker's is not the web's).
ENVIRONMENT_SITE_URL := $(SITE_URL)
DOTENV_SITE_URL = $(shell $(BIN)/python -c "from dotenv import dotenv_values; print(dotenv_values('.env').get('SITE_URL') or '')")
run: private export SITE_URL = $(or $(ENVIRONMENT_SITE_URL),$(DOTENV_SITE_URL),http://127.0.0.1:$(PORT)/site/)
run: $(BIN)/.installed .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py devsetup --port $(PORT)
	PATH="$(CURDIR)/$(BIN):$$PATH" exec $(BIN)/honcho start --no-colour -e /dev/null -f Procfile.dev -p $(PORT)

test: $(BIN)/.installed
	tests/run

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark in bench/ in turn, each figure beside its anchor (docs/performance.md). QUICK=1: small sizes and
# fewer repeats, under 5 minutes. django-distill and django-bakery are bench-only extras (requirements-bench.txt).
.PHONY: bench
bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(BIN)/python bench/run_all.py $(if $(filter-out 0,$(QUICK)),--quick)
