# The two set-up commands of the README. Both create .venv and install what they need.
#   make run    the main job on the built-in default
#   make test   lint + the whole test suite (CPU, offline)
VENV ?= .venv
PYTHON ?= python3
# Installed first when the venv has no torch: on the project machines this is a small CPU build on local
# disk, while a bare `torch` requirement would pull a multi-GB CUDA build. Override for a GPU box, e.g.
# `make run TORCH=torch==2.11.0`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test clean

run: $(VENV)/.installed
	$(BIN)/gna-diffusers compare

test: $(VENV)/.installed
	$(BIN)/python -m ruff check gna_diffusers patches benchmarks tests examples
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist worksteal

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
