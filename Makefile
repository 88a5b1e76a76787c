# Everything runs inside the project's virtual environment (.venv), made by `make install`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install test lint format train clean bench

install:  ## create .venv and install the project with its pinned torch/torchvision pair
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"

test:  ## the test suite (uses ../shared/datasets for MNIST/Fashion-MNIST when present)
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check src tests hydra_plugins
	$(BIN)/ruff format --check src tests hydra_plugins

format:
	$(BIN)/ruff format src tests hydra_plugins
	$(BIN)/ruff check --fix src tests hydra_plugins

train:  ## the default job, or e.g. `make train ARGS="model=vae data=mnist"`
	$(BIN)/python -m src.run $(ARGS)

clean:  ## remove run folders and caches (keeps data/ and .venv)
	rm -rf outputs/runs outputs/multiruns .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

bench:  ## benchmarks (not tests): a table and bench/results.json; run on an idle machine
	$(BIN)/python -m benchmarks.run $(ARGS)
