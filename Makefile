# vdm — `make help` lists the targets. Every target installs what it needs first.

# torch goes in first, pinned. The version does not pick a CPU or a CUDA build; the index does:
# PyPI's Linux x86_64 wheels are CUDA builds, and TORCH_INDEX_URL names another wheel index, e.g.
# https://download.pytorch.org/whl/cu128 (CUDA 12.8) or https://download.pytorch.org/whl/cpu.
# TORCH_VERSION=keep installs no torch: it keeps the one already in $(VENV) (your own build),
# and later make calls on that .venv remember it.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= $(if $(wildcard $(VENV)/.installed-keep),keep,2.13.0)
TORCH_INDEX_URL ?=
# A torch of the same version from another index counts as installed to pip: force the swap.
TORCH_FROM_INDEX = $(if $(TORCH_INDEX_URL),--force-reinstall --index-url $(TORCH_INDEX_URL))
BIN := $(VENV)/bin
ARGS ?=
VAE_ARGS ?=
# Stamp files make `make install` idempotent: pip runs again only when pyproject.toml changes.
INSTALLED := $(VENV)/.installed-$(TORCH_VERSION)$(if $(TORCH_INDEX_URL),-$(notdir $(TORCH_INDEX_URL)))
BENCH_INSTALLED := $(VENV)/.installed-bench

.DEFAULT_GOAL := help
.PHONY: help install train test test-slow test-all lint format bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch goes first and pinned: an unpinned torch pulled in by another package could resolve to
# a multi-GB CUDA build on a CPU-only machine. With TORCH_VERSION=keep, vdm's `torch>=2.4` is met
# by the torch already there, so pip leaves it alone.
$(INSTALLED): pyproject.toml | $(BIN)/python
ifeq ($(TORCH_VERSION),keep)
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "make: TORCH_VERSION=keep, but \
	$(VENV) has no torch: install yours first, e.g. $(BIN)/python -m pip install torch \
	--index-url https://download.pytorch.org/whl/cu128"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
else
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_FROM_INDEX)
endif
	$(BIN)/python -m pip install --quiet -e ".[dev,hpo,latent,text,finetune]"
	touch $@

install: $(INSTALLED) ## Create .venv, install torch==$(TORCH_VERSION) (TORCH_INDEX_URL, keep), then vdm[dev,hpo,latent,text,finetune]

# The default run is latent diffusion on the 64² shapes, in two runs: vdm's VAE (run folder
# shapes_vae: a later `make train` resumes it if it was stopped, and skips it once finished), then
# the U-Net on its latents. ARGS go to the second, VAE_ARGS to the first. `python train.py` alone trains in pixel space.
train: install ## Train the default: vdm's VAE once, then latent diffusion on the shapes; Hydra overrides in ARGS="..."
	$(BIN)/python train.py experiment=shapes_vae $(VAE_ARGS)
	$(BIN)/python train.py experiment=shapes_latent $(ARGS)

test: install ## Run the fast test suite
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: install ## Run only the slow end-to-end tests (the README's commands)
	$(BIN)/python -m pytest -m slow $(ARGS)

test-all: install ## Run every test, the slow end-to-end ones included
	$(BIN)/python -m pytest $(ARGS)

lint: install ## ruff check + ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# video-diffusion-pytorch's metadata asks for torchvision and transformers; PyPI's torchvision
# does not import beside the pinned CPU torch, so it goes in without its dependencies.
$(BENCH_INSTALLED): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m pip install --quiet --no-deps video-diffusion-pytorch
	touch $@

bench: $(BENCH_INSTALLED) ## Run the benchmarks in bench/ (installs diffusers, video-diffusion-pytorch)
	@scripts=$$(ls bench/*.py 2>/dev/null | grep -v '/_'); \
	if [ -z "$$scripts" ]; then echo "no benchmarks in bench/ yet"; fi; \
	for s in $$scripts; do echo "== $$s"; $(BIN)/python $$s $(ARGS) || exit 1; done

clean: ## Remove the virtual environment, caches and run outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs multirun logs wandb *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
