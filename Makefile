# Writeback developer targets. On a fresh Debian machine use ./run <target> (as root), which
# installs the system packages first; `make <target>` works once they are there.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := devstack/node_modules/.installed
# checkov has its own environment: it pins packages that conflict with ours.
CHECKOV_STAMP := .venv-checkov/.installed
# The azurerm provider's schema (npm @cdktf/provider-azurerm), which tests/infra checks Terraform
# against; pinned, integrity included, by its package-lock.json. Its install scripts never run.
AZURERM_SCHEMA := tests/infra/schemas/azurerm
AZURERM_STAMP := $(AZURERM_SCHEMA)/node_modules/.installed
# The azuread provider's schema (npm @cdktf/provider-azuread), for the app registrations, the same way.
AZUREAD_SCHEMA := tests/infra/schemas/azuread
AZUREAD_STAMP := $(AZUREAD_SCHEMA)/node_modules/.installed
PYTEST_OPTS ?=

.PHONY: bench-memory deps lint typecheck test test-unit test-integration test-infra test-e2e demo up down demo-directory functions dc-up dc-down bench doctor soak clean

# The Python worker's own indexing and binding code (devstack/worker.py): the worker Azure runs
# for Python 3.13+, whose wheel says so; its code runs on 3.11 and is the 3.11 worker's.
WORKER := azure-functions-runtime==1.3.0
# The oldest azure-functions a supported worker bundles, for the converter tests (tests/unit).
OLDEST_LIBRARY := azure-functions==1.24.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python '$(WORKER)'
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(VENV)/oldest-library '$(OLDEST_LIBRARY)'
	touch $(STAMP)

# Azurite (the Azure Storage emulator) comes from npm, pinned by devstack/package-lock.json.
$(NODE_STAMP): devstack/package.json devstack/package-lock.json
	npm ci --prefix devstack --no-audit --no-fund
	touch $(NODE_STAMP)

$(AZURERM_STAMP): $(AZURERM_SCHEMA)/package.json $(AZURERM_SCHEMA)/package-lock.json
	npm ci --prefix $(AZURERM_SCHEMA) --ignore-scripts --omit=peer --no-audit --no-fund
	touch $(AZURERM_STAMP)

$(AZUREAD_STAMP): $(AZUREAD_SCHEMA)/package.json $(AZUREAD_SCHEMA)/package-lock.json
	npm ci --prefix $(AZUREAD_SCHEMA) --ignore-scripts --omit=peer --no-audit --no-fund
	touch $(AZUREAD_STAMP)

$(CHECKOV_STAMP):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet checkov==3.3.30
	touch $(CHECKOV_STAMP)

deps: $(STAMP) $(NODE_STAMP)

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: deps
	$(BIN)/mypy

# The README's test command: lint, types, unit, infra, integration (a real Samba AD DC) and e2e
# tests; the pure suites run beside the server suites (tests/suites.py).
test: lint typecheck $(CHECKOV_STAMP) $(AZURERM_STAMP) $(AZUREAD_STAMP)
	WRITEBACK_REQUIRE_CHECKOV=1 $(BIN)/python -m tests.suites $(PYTEST_OPTS)

test-unit: deps
	$(BIN)/pytest -m unit $(PYTEST_OPTS)

test-integration: deps
	$(BIN)/pytest -m integration $(PYTEST_OPTS)

# Bicep and Terraform, offline: parsing, structure, parity, the settings contract, checkov, fmt,
# and every property and argument against the compiler's and the provider's own type data.
test-infra: deps $(CHECKOV_STAMP) $(AZURERM_STAMP) $(AZUREAD_STAMP)
	WRITEBACK_REQUIRE_CHECKOV=1 $(BIN)/pytest -m infra $(PYTEST_OPTS)

# The HTTP API through the whole local stack (DC, Azurite, broker, relay, local Functions host).
test-e2e: deps
	$(BIN)/pytest -m e2e $(PYTEST_OPTS)

# function_app.py on the local Functions host with the settings of local.settings.sample.json.
functions: deps
	$(BIN)/python -m devstack.functions_host --settings local.settings.sample.json

# The README's main job: the whole local stack, then writeback through its HTTP API.
demo: deps
	$(BIN)/python -m devstack demo

# The whole local stack in the background (DC, Azurite, broker, Functions host, relay);
# `source .devstack/env` to drive it. `make down` stops all of it.
up: deps
	$(BIN)/python -m devstack up

down: deps
	$(BIN)/python -m devstack down

# The directory layer and the wire without the cloud side (the earlier demos).
demo-directory: deps
	$(BIN)/python -m devstack demo-directory

dc-up: deps
	$(BIN)/python -m devstack dc-up

dc-down: deps
	$(BIN)/python -m devstack dc-down

# The chaos soak (docs/reliability.md): 1,000 writes at concurrency 8 through the whole local
# stack while relays are killed and the broker, Azurite and the DC restarted; then the checks.
SOAK_WRITES ?= 1000
SOAK_SEED ?= 1
soak: deps
	$(BIN)/python -m devstack soak --writes $(SOAK_WRITES) --concurrency 8 --seed $(SOAK_SEED)

doctor: deps
	$(BIN)/writeback-relay doctor --config .devstack/relay.toml

bench: deps
	$(BIN)/python -m bench.directory
	$(BIN)/python -m bench.sealing
	$(BIN)/python -m bench.transport
	$(BIN)/python -m bench.relay
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.report

# The relay's memory over 50,000 requests arriving at 100/s (about nine minutes).
bench-memory: deps
	$(BIN)/python -m bench.memory

clean: down
	rm -rf .devstack
