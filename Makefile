# Shoal's two entry points for a newcomer (see README.md):
#   make demo   runs the main job on the embedded store (no daemon, no Kubo)
#   make test   installs what the tests need and passes the whole suite
# Each installs what it needs through scripts/setup.sh, which skips what
# is already there.

CARGO ?= cargo
SHOAL := target/debug/shoal

.PHONY: all demo test lint unit bench deps deps-test build samples clean

all: build

build:
	$(CARGO) build --workspace

deps:
	scripts/setup.sh --samples

# --vulkan: Mesa's software Vulkan driver (lavapipe) runs the GPU backend's
# tests where there is no GPU. --web: Chromium and a Python venv for the
# API fuzzer, the dashboard's browser test and the Python client's tests.
deps-test:
	scripts/setup.sh --test --samples --vulkan --web

samples: deps
	$(MAKE) -C samples

## The main job, on the embedded store (no daemon, no Kubo): a word count
## over the sample dataset, inputs and result addressed by CID.
demo: samples build
	scripts/demo.sh $(SHOAL)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Everything CI runs. Crates are fetched and built first; the tests then
## run with no network but loopback (scripts/offline.sh).
test: deps-test lint
	$(CARGO) test --workspace --no-run
	scripts/offline.sh $(CARGO) test --workspace --offline
	scripts/offline.sh scripts/web-tests.sh target/debug/shoal

## Benchmarks: ratios measured side by side in one run (see docs/).
bench: deps-test
	$(MAKE) -C samples
	$(CARGO) bench -p shoal-storage --bench storage
	$(CARGO) bench -p shoal-runtime --bench runtime
	$(CARGO) bench -p shoal-runtime --bench nn
	$(CARGO) bench -p shoal --features bench-tools --bench process
	scripts/offline.sh $(CARGO) bench --offline -p shoal --bench network
	$(CARGO) build --release --bin shoal
	scripts/offline.sh python3 scripts/bench-ipfs.py target/release/shoal 256 6

clean:
	$(CARGO) clean
