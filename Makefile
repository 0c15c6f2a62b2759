# Two entry points, each doing its own set-up in .venv: `make demo` and `make test`.
# TORCH pins the CPU wheel that this kind of machine carries locally; on a GPU machine,
# `make TORCH=torch demo` (or plain `pip install .`) takes the registry's CUDA build instead.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint format setup clean chromium

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test,tensorboard]"
	# cityscapesScripts is the reference evaluator the tests compare against. Its metadata
	# pins the Python-2 `typing` backport, so it is installed without resolving dependencies.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps cityscapesscripts==2.3.0 pyquaternion appdirs coloredlogs humanfriendly
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/udaseg demo

test: setup chromium
	$(BIN)/ruff check udaseg tests bench
	$(BIN)/ruff format --check udaseg tests bench
	$(BIN)/python -m pytest -q -n 2 tests

# The browser test of `udaseg report` (tests/test_report.py) drives Debian's headless Chromium,
# installed here when absent (apt-get, as root: CI runs as root; elsewhere install it yourself).
chromium:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

lint: setup
	$(BIN)/ruff check udaseg tests bench

format: setup
	$(BIN)/ruff format udaseg tests bench
	$(BIN)/ruff check --fix udaseg tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
