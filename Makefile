# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Local runs stay offline and quiet: no hub downloads, wandb offline, Ray without token auth,
# DeepSpeed's CPU ops compiled once into a cache inside the repo.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export RAY_AUTH_MODE ?= disabled
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch first, pinned to the CPU build, so no later step resolves a multi-GB CUDA build;
# constraints.txt holds the exact tested versions (torch included) so nothing upgrades it.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/mmc-ray demo --out runs/demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
