# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[demo,test]"
	touch $(STAMP)

install: $(STAMP)

## The whole story in ~15 s with nothing else installed: an embedded broker (amqtt), Secrets
## Manager and S3 (moto), a control plane and a core; `$(BIN)/edge demo --keep` keeps it running.
demo: install
	$(BIN)/edge demo

## Lint, type-check and run every test (unit and integration). The tests start their own
## Mosquitto and SoftHSM2 token: each installer does nothing when its package is there.
## PostgreSQL: the server on 127.0.0.1:5432, else one .ci/install-postgresql starts.
test: install lint typecheck
	@# Bytecode for the hundreds of `python -m edge` processes the tests start: an editable
	@# install has none, and where PYTHONDONTWRITEBYTECODE is set each would compile edge anew.
	$(BIN)/python -m compileall -q edge connectors
	bash .ci/install-mosquitto
	bash .ci/install-tools
	bash .ci/install-softhsm
	bash .ci/install-pkcs11-provider
	@# A short base directory: xdist nests each worker's files one level deeper, and the demo's
	@# IPC socket path must stay under the 107 bytes a Unix socket allows. Kept on failure.
	@url=$$(bash .ci/install-postgresql) || exit 1; \
	if [ -n "$$url" ]; then export EDGE_TEST_POSTGRES_URL=$$url; fi; \
	base=$$(mktemp -d /tmp/et-XXXXXX); \
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --basetemp=$$base; status=$$?; \
	if [ $$status -eq 0 ]; then rm -rf $$base; else echo "test files kept in $$base"; fi; \
	exit $$status

lint: install
	$(BIN)/ruff check edge connectors tests bench
	$(BIN)/ruff format --check edge connectors tests bench

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
