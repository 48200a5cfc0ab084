# The front door. `make crosscheck` and `make test` set everything up on a fresh machine.
# Other machines: the CPU wheel of torch may need `make TORCH_INDEX=https://download.pytorch.org/whl/cpu ...`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_INDEX ?=
CASES ?= 200
SEED ?= 0
JOBS ?= 2
SHARED ?= $(abspath ../shared)
export NLTK_DATA ?= $(SHARED)/nltk_data
export SCRATCH_RNN_SHARED := $(SHARED)

STAMP := $(VENV)/.installed

.PHONY: setup crosscheck test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## The main job: scratch vs torch vs finite differences over random configurations.
crosscheck: $(STAMP)
	$(PY) -m reference.crosscheck --cases $(CASES) --seed $(SEED)

## The test suite exactly as CI runs it (thorough hypothesis profile).
test: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -n $(JOBS) --hypothesis-profile=thorough

## A quicker pass for development.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
