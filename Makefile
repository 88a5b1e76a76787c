# Everything runs inside the project's virtual environment (.venv). `make train` and `make test`
# create it first when it is missing or older than pyproject.toml (the stamp .venv/.installed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install test test-fast lint format train clean bench

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
