# Two commands for a newcomer: `make run` (Tessera on SQLite) and `make test` (everything).
# Each target creates or refreshes the virtualenv it needs; versions are pinned by
# constraints.txt (regenerate with `make lock`).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-tessera
ASSETS := tessera/web/static/vendor/.stamp-assets
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: run test lint typecheck pytest clients assets lock bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The web UI's front-end packages: npm installs them from package-lock.json, then they are
# copied into the git-ignored tessera/web/static/vendor (a built wheel carries them).
$(ASSETS): $(STAMP) package.json package-lock.json tessera/web/vendor.py
	@command -v npm >/dev/null 2>&1 || { echo "make: the web UI needs Node.js and npm to install its front-end packages; install them (Debian: apt-get install nodejs npm) and run make again" >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	$(BIN)/python -m tessera.web.vendor build
	touch $(ASSETS)

assets: $(ASSETS)

run: $(STAMP) $(ASSETS)
	$(BIN)/tessera serve

test: lint typecheck clients assets pytest

lint: $(STAMP)
	$(BIN)/ruff check tessera tests benchmarks scripts
	$(BIN)/ruff format --check tessera tests benchmarks scripts

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
	rm -rf $(VENV) .venv-clients tests/clients/node/node_modules node_modules tessera/web/static/vendor
