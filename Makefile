# The two commands a new user needs: `make run` and `make test`.
# Both create the virtual environment and install what they need first: `make run` the
# runtime only, `make test` the development tools and every test dependency as well, at the
# exact versions of requirements/lock.txt (`make lock` refreshes it; `make test-latest` runs
# the suite against the newest releases instead, to meet the next breaking one on purpose).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
PIP    := $(BIN)/pip install --quiet --constraint $(LOCK)

.PHONY: run test test-pure lint format bench clean lock test-latest wasm-example chromium soak

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# Sperse's own modules compiled to bytecode, as pip does for an installed package: an
# editable install compiles none, and where PYTHONDONTWRITEBYTECODE is set nothing writes
# them later, so every process (the server, each worker) would compile them as it starts.
COMPILE := $(BIN)/python -m compileall -q src

$(VENV)/.installed-run: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e '.[dev]'
	$(COMPILE)
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/sperse

test: lint chromium
	$(BIN)/python -m pytest -q
	bash scripts/test_other_pythons.sh

# The dashboard's browser tests (tests/dashboard) drive the system's Chromium with Playwright
# (pinned in the lock); Debian's package where it is missing. Never `playwright install`,
# which downloads a browser build of its own.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "make: installing Chromium for the browser tests (apt-get install chromium)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The protocol fuzz tests at length (make test runs each with 30 sequences): the session's,
# the coordinator's and the store's (each directory's tests run apart: their helpers
# differ); then ten minutes of chaos (make test runs 30 s of it).
soak: $(VENV)/.installed-dev
	for t in tests/server/test_server_fuzz.py tests/coordinator/test_coordinator_fuzz.py \
	    tests/state/test_store_fuzz.py; do \
	  SPERSE_FUZZ_EXAMPLES=3000 $(BIN)/python -m pytest -q $$t || exit 1; done
	$(BIN)/python bench/chaos.py --seconds 600

# The pure layers' tests on every other supported Python found here (3.12, 3.13).
test-pure:
	bash scripts/test_other_pythons.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

# The lock: what `pip install -e '.[dev]'` resolves today, in a scratch environment.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions for make run / make test. Refresh with: make lock"; \
	  .venv-lock/bin/pip freeze --exclude-editable --all | grep -v -E '^(setuptools|wheel)=='; \
	} > $(LOCK)
	rm -rf .venv-lock

# Every test against the newest releases of everything (no lock), in a separate environment.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet --upgrade pip
	.venv-latest/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	.venv-latest/bin/python -m pytest -q

# Every script of bench/README.md's table (each prints its targets; none fails on a miss).
# Peers that are not installed (Ray, Dask) are skipped, saying so.
bench: $(VENV)/.installed-dev chromium
	$(COMPILE)
	$(BIN)/python bench/graph.py
	$(BIN)/python bench/analysis.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/state.py
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/repl.py
	$(BIN)/python bench/remote.py --compare
	$(BIN)/python bench/remote.py --transport grpc
	$(BIN)/python bench/mapreduce.py
	$(BIN)/python bench/structure.py
	$(BIN)/python bench/objects.py
	$(BIN)/python bench/dashboard.py
	$(BIN)/python bench/dashboard_page.py
	$(BIN)/python bench/services.py
	$(BIN)/python bench/flows.py

# The WebAssembly example of `sperse submit` (docs/jobs.md). The built module is committed, so
# `make test` needs no C toolchain; this rebuilds it with zig from PyPI (the ziglang package;
# the same version gives the same bytes).
wasm-example: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet 'ziglang==0.17.1'
	$(BIN)/python -m ziglang cc -target wasm32-wasi -Os -s -Wl,-z,stack-size=65536 \
		-o examples/wasm/summer.wasm examples/wasm/summer.c

clean:
	rm -rf $(VENV) .venv-* build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
