# make demo   — install into .venv if needed, then run the pipeline on synthetic data
# make test   — install into .venv if needed, then run the whole test suite
# make test-quick — the same without the tests marked slow (the example pipeline, Ray, the wheel build)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-quick demo lint format clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the stamp marks a finished install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

test-quick: install
	$(BIN)/python -m pytest -m "not slow"

# The demo's steps are independent past the reference: DEMO_JOBS of them run at once, the cores shared out
# between them (on 2 cores, two 1-thread jobs finish sooner than one 2-thread job at a time). Through tee,
# the commands print progress as whole lines, which interleave readably; demo/make.log keeps them.
DEMO_JOBS ?= 2
DEMO_THREADS := $(shell n=$$(( $$(nproc) / $(DEMO_JOBS) )); [ $$n -ge 1 ] && echo $$n || echo 1)

demo: SHELL := /bin/bash
demo: .SHELLFLAGS := -o pipefail -c
demo: install
	mkdir -p demo
	OMP_NUM_THREADS=$(DEMO_THREADS) $(MAKE) --no-print-directory -j$(DEMO_JOBS) \
		-f examples/pipeline.mk CURATE=$(abspath $(BIN)/curate) OUT=demo 2>&1 | tee -a demo/make.log

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf demo .pytest_cache
