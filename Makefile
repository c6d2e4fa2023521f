# Two commands for a newcomer: `make run` (Tessera on SQLite) and `make test` (everything).
# Each target creates or refreshes the virtualenv it needs; versions are pinned by
# constraints.txt (regenerate with `make lock`).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-tessera
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: run test lint typecheck pytest clients lock bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tessera serve

test: lint typecheck clients pytest

lint: $(STAMP)
	$(BIN)/ruff check tessera tests benchmarks
	$(BIN)/ruff format --check tessera tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

clients: $(STAMP)
	bash tests/clients/setup.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install $(PIP_FLAGS) -e '.[dev]'
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^tessera' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-clients tests/clients/node/node_modules
