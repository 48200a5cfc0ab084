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

.PHONY: setup lint crosscheck test test-fast sentiment sentiment-quick gradients gradients-quick bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## The main job: scratch vs torch vs finite differences over random configurations.
crosscheck: $(STAMP)
	$(PY) -m reference.crosscheck --cases $(CASES) --seed $(SEED) --cell all

## IMDB sentiment: the NumPy model and its torch twin from the same weights (about 3 min).
sentiment: $(STAMP)
	$(PY) -m experiments.sentiment --backend both --embedding glove --stopwords keep-negations \
		--run-name glove-keep-negations-both

sentiment-quick: $(STAMP)
	$(PY) -m experiments.sentiment --preset quick --backend both

## The exploding/vanishing gradient study: the four experiments (reduced pathological grid; ~12 min).
gradients: $(STAMP)
	$(PY) -m experiments.gradients spectrum
	$(PY) -m experiments.gradients cliff
	$(PY) -m experiments.gradients pathological
	$(PY) -m experiments.gradients flow

gradients-quick: $(STAMP)
	for e in spectrum cliff pathological flow; do $(PY) -m experiments.gradients $$e --quick || exit 1; done

## Forward+backward speed and memory against torch.nn.RNN.
bench: $(STAMP)
	$(PY) -m benchmarks.rnn

## The test suite exactly as CI runs it (thorough hypothesis profile).
test: $(STAMP) lint
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -n $(JOBS) --hypothesis-profile=thorough

## ruff (lint and format check) and the type checker, on every Python folder of the project.
LINTED := scratch_rnn reference experiments benchmarks tests docs
lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy scratch_rnn reference

## A quicker pass for development.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
