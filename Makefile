# make demo   — install into .venv if needed, then run the pipeline on synthetic data
# make test   — install into .venv if needed, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo lint format clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the stamp marks a finished install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	$(MAKE) --no-print-directory -f examples/pipeline.mk CURATE=$(abspath $(BIN)/curate) OUT=demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf demo .pytest_cache
