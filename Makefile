# spd_ref: every target sets itself up (venv, pinned packages, offline model), so a fresh clone only
# needs `make test`. Python 3.11 is required (PYTHON=... to point at another 3.11 interpreter).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Stamp file: the install step reruns only when requirements.txt or pyproject.toml change.
INSTALLED := $(VENV)/.installed
MODEL := .cache/SmolLM2-135M-Instruct/model.safetensors
PYTEST_ARGS ?=

# No hub here (RESOURCES.md): everything runs offline with project-local caches. Absolute paths, because
# notebook kernels run in notebooks/.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.cache/hf
export SPD_REF_CACHE := $(CURDIR)/.cache
export MPLBACKEND := Agg
export TOKENIZERS_PARALLELISM := false

# pip prints a "Location ... is ignored" warning per package for this machine's extra indexes: drop those
# lines, keep pip's exit status (pipefail; `|| true` only covers grep finding nothing to print).
QUIET_PIP := 2>&1 | { grep -v 'is ignored' || true; }

.PHONY: help setup test demo lab clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q -r requirements.txt $(QUIET_PIP)
	$(PY) -m pip install -q -e . --no-deps $(QUIET_PIP)
	touch $@

$(MODEL): | $(INSTALLED)
	TQDM_DISABLE=1 $(PY) -c "from spd_ref.models import smollm2_path; smollm2_path()"

setup: $(INSTALLED) $(MODEL)  ## create .venv, install the pins and spd_ref, fetch the offline model

# The tests run spd_ref's Triton kernel under Triton's CPU interpreter. CUDA builds of torch bring their own
# triton (left alone); the CPU build has none, so the tests install this one.
TRITON_PIN := triton==3.9.0

test: setup  ## pytest over tests/, then nbval over notebooks/ (PYTEST_ARGS="-m 'not slow'" to skip slow ones)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q $(TRITON_PIN) $(QUIET_PIP)
	$(PY) -m pytest $(PYTEST_ARGS) tests
	@if compgen -G 'notebooks/*.ipynb' > /dev/null; then \
		$(PY) -m pytest --nbval-lax notebooks/; \
	else echo "no notebooks in notebooks/ yet: nbval skipped"; fi

demo: setup  ## calibrate SmolLM2 at TP 4, evaluate, print the table
	$(PY) -m spd_ref demo

lab: setup  ## open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

clean:  ## remove the venv and caches (the model is fetched again next time)
	rm -rf $(VENV) .cache .pytest_cache
