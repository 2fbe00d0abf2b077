# Set-up and entry points. Every target creates the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins packaging<24, which pytest cannot share, so it gets a venv of its own.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
# The browser tests drive Debian's Chromium; Playwright's own download is not used.
CHROMIUM := /usr/bin/chromium

.PHONY: up test lint clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet 'checkov==3.3.30'
	touch $(TOOLS_STAMP)

browser:
	@test -x $(CHROMIUM) || { apt-get update && apt-get install -y chromium; }

up: $(STAMP)
	$(BIN)/chatmesh up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(TOOLS_STAMP) browser
	CHECKOV=$(TOOLS)/bin/checkov $(BIN)/pytest

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache
