# gatescope: set-up, app, tests, benchmarks. Every target installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8501
STAMP := $(VENV)/.gatescope-installed

.PHONY: setup app test lint bench figures browser clean

setup: $(STAMP)

# torch 2.13.0 first (the CPU build); the project's torch range then installs nothing more.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,bench]'
	touch $(STAMP)

app: setup
	$(PY) -m app.cli app --port $(PORT)  # localhost only, no usage statistics (app/cli.py)

# Debian's Chromium for the real-browser test (never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright --pythonpath $(PY)

# Two steps: the fast suite (tiny models, reference models), then the slow one (notebooks,
# the real browser, training runs).
test: setup browser lint
	$(VENV)/bin/pytest -q -p no:cacheprovider
	$(VENV)/bin/pytest -q -p no:cacheprovider -m slow

bench: setup
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

figures: setup
	@for f in bench/relp_rules.py bench/concepts_reference.py bench/sae_topk_vs_vsae.py; do \
		echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build dist
