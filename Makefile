# The two commands a new user needs: `make run` and `make test`.
# Both create the virtual environment and install everything first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench clean wasm-example

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sperse

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/graph.py
	$(BIN)/python bench/analysis.py
	$(BIN)/python bench/remote.py
	$(BIN)/python bench/repl.py
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/mapreduce.py
	$(BIN)/python bench/objects.py
	$(BIN)/python bench/state.py

# The WebAssembly example of `sperse submit` (docs/jobs.md). The built module is committed, so
# `make test` needs no C toolchain; this rebuilds it with zig from PyPI (the ziglang package;
# the same version gives the same bytes).
wasm-example: $(STAMP)
	$(BIN)/pip install --quiet 'ziglang==0.17.1'
	$(BIN)/python -m ziglang cc -target wasm32-wasi -Os -s -Wl,-z,stack-size=65536 \
		-o examples/wasm/summer.wasm examples/wasm/summer.c

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
