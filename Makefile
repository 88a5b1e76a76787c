# Everything runs inside the project's virtual environment (.venv). `make train` and `make test`
# create it first when it is missing or older than pyproject.toml (the stamp .venv/.installed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install test test-fast lint format train clean bench device-pack device-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its pinned torch/torchvision pair

test: $(STAMP)  ## the whole test suite (uses ../shared/datasets for MNIST/Fashion-MNIST when present)
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## the tests without the slow end-to-end ones
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests hydra_plugins benchmarks
	$(BIN)/ruff format --check src tests hydra_plugins benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests hydra_plugins benchmarks
	$(BIN)/ruff check --fix src tests hydra_plugins benchmarks

train: $(STAMP)  ## the default job, or e.g. `make train ARGS="model=vae data=mnist"`
	$(BIN)/python -m src.run $(ARGS)

clean:  ## remove run folders and caches (keeps data/ and .venv)
	rm -rf outputs/runs outputs/multiruns .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

bench: $(STAMP)  ## benchmarks (not tests): a table and bench/results.json; run on an idle machine
	$(BIN)/python -m benchmarks.run $(ARGS)

# A lent GPU machine (docs/performance.md, "On a GPU") has torch and Lightning but not Hydra, the
# data or a network: device-pack (here) puts what it lacks into .device/, which travels when carried.
DEVICE_WHEELS := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
device-pack: $(STAMP)  ## here: the GPU machine's missing wheels and the gzipped MNIST/Fashion-MNIST into .device/
	rm -rf .device && mkdir -p .device/whl .device/data
	$(BIN)/python -m pip download --quiet $(DEVICE_WHEELS) -d .device/whl hydra-core==1.3.8 omegaconf==2.3.1
	$(BIN)/python -m pip wheel --quiet --no-deps -w .device/whl antlr4-python3-runtime==4.9.3
	for set in MNIST FashionMNIST; do \
		mkdir -p .device/data/$$set/raw; \
		for file in $${DATA_ROOT:-../shared/datasets}/$$set/raw/*-ubyte; do gzip -c $$file > .device/data/$$set/raw/$$(basename $$file).gz; done; \
	done

device-check:  ## on a lent GPU machine (carry .device): the central jobs on cuda into bench/device.json
	bash benchmarks/device.sh --accelerator cuda --output bench/device.json
