# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Run the core against a local Mosquitto and moto, deploy two secrets, list them.
demo: install
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || bash .ci/install-mosquitto
	$(BIN)/python -m scripts.local_demo

## Lint, type-check and run every test (unit and integration).
test: install lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check edge tests bench scripts
	$(BIN)/ruff format --check edge tests bench scripts

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

bench: install
	$(BIN)/python bench/deploy.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
