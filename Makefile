# make demo   — install into .venv if needed, then run the pipeline on synthetic data
# make test   — install into .venv if needed, then run the whole test suite
# make docs   — the documentation site into site/: the command reference from the Typer app, then mkdocs --strict
# make test-quick — the same without the tests marked slow (the example pipeline, Ray, the wheel build)
# make experiment — docs/results/experiments.md's table: every learner over 3 seeds (about 90 minutes on 2 cores)
# make false-negatives — issue 18: JEST with and without the false-negative mask and dedup, 2 crawls x 3 seeds
# make paper — paper/paper.md: the paper's further claims (filter ratio, chunks, a learner larger than its
#   reference, budgets), 3 seeds (about 4 hours on 2 cores, 3.5 to 5: an estimate from the step counts)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install docs test test-quick demo experiment false-negatives paper lint format clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the stamp marks a finished install. uv resolves and
# unpacks the wheels in parallel: from a fresh clone on this project's 2-core machine it installed in 50 s
# where pip took 78 s (docs/development.md); it reads PyPI, not pip's configuration files.
# --compile-bytecode, as pip does by default: where PYTHONDONTWRITEBYTECODE is set (as on this machine),
# nothing else ever writes the .pyc files, and every process would compile torch and open_clip again
# (10 s to import them, not 5: the suite took 9.8 minutes of pytest instead of 6.3 to 6.8).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev,ray]'
	touch $(STAMP)

# The command reference is generated from the Typer app on every build (never committed, so it cannot
# drift from the code); tests/test_docs.py checks it against the app and every command the docs quote.
docs: install
	$(BIN)/typer curate_cli.main utils docs --name curate --title "Command options" --output docs/reference/cli.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# One worker per core, each test file in one worker (its module fixtures made once); --durations: the
# slowest tests, at the end of every run, so the suite's time stays in sight.
test: install
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=20

test-quick: install
	$(BIN)/python -m pytest -n auto --dist loadfile -m "not slow"

# Past the reference the steps are independent: JOBS of them run at once (make -jN sets it too), the cores
# shared out between them (on 2 cores, two 1-thread jobs finish sooner than one 2-thread job at a time).
# Through tee, the commands print progress as whole lines, which interleave readably; the log keeps them.
GIVEN_JOBS := $(patsubst -j%,%,$(filter -j%,$(MAKEFLAGS)))
JOBS ?= $(if $(GIVEN_JOBS),$(GIVEN_JOBS),2)
THREADS := $(shell n=$$(( $$(nproc) / $(JOBS) )); [ $$n -ge 1 ] && echo $$n || echo 1)
PIPELINE = OMP_NUM_THREADS=$(THREADS) $(MAKE) --no-print-directory -j$(JOBS) CURATE=$(abspath $(BIN)/curate)

# The quick look: a crawl half the experiment's, the smallest setting at which JEST's ordering held in each
# of 3 seeds (docs/results/experiments.md, "The demo's setting": at 100 steps it did not), four learners;
# ends with the report and the headline (each learner's top-1 and total compute, everything counted,
# against uniform's), then how many seeds stand behind it.
DEMO_SETTINGS = N=10000 STEPS=200 REF_STEPS=200 WARMUP=100 EVAL_EVERY=100 \
	LEARNERS="uniform uniform-3x clipscore jest"
DEMO_SEEDS = this is seed 0 of 3 at this setting: JEST ended above the CLIP-score filter and above uniform \
	at 3x the steps in each of seeds 0, 1 and 2, on each of the two machines measured (on the current one: \
	0.137, 0.141, 0.141 against 0.106, 0.119, 0.121 and 0.105, 0.104, 0.131; another CPU gives other digits; \
	docs/results/experiments.md)

demo: SHELL := /bin/bash
demo: .SHELLFLAGS := -o pipefail -c
demo: install
	mkdir -p demo
	$(PIPELINE) -f examples/pipeline.mk OUT=demo $(DEMO_SETTINGS) 2>&1 | tee -a demo/make.log
	@echo "$(DEMO_SEEDS)" | tee -a demo/make.log

# docs/results/experiments.md's table: every learner, 3 seeds at the pipeline's full size, then
# experiment/results.md. Resumable: rerun it and only what is missing runs.
experiment: SHELL := /bin/bash
experiment: .SHELLFLAGS := -o pipefail -c
experiment: install
	mkdir -p experiment
	$(PIPELINE) -f examples/experiment.mk OUT=experiment PYTHON=$(abspath $(BIN)/python) 2>&1 \
		| tee -a experiment/make.log

# Issue 18's tables: independent and JEST, each with and without the false-negative mask and dedup, on
# the hard crawl and on a few-concept one, 3 seeds (FN_SETTINGS="N=10000 STEPS=100 ..." for a smaller run).
false-negatives: SHELL := /bin/bash
false-negatives: .SHELLFLAGS := -o pipefail -c
false-negatives: install
	mkdir -p false-negatives
	$(PIPELINE) -f examples/false_negatives.mk OUT=false-negatives PYTHON=$(abspath $(BIN)/python) \
		SETTINGS="$(FN_SETTINGS)" 2>&1 | tee -a false-negatives/make.log

# The paper's further claims (examples/paper.mk): per seed the pipeline's learners, JEST and independent at
# F = 0.5 and 0.9, uniform, JEST and the CLIP-score filter at 100 and 400 steps, siglip-small learners
# steered by the siglip-tiny reference, chunks against the Gibbs oracle; then paper/paper.md. Resumable.
paper: SHELL := /bin/bash
paper: .SHELLFLAGS := -o pipefail -c
paper: install
	mkdir -p paper
	$(PIPELINE) -f examples/paper.mk OUT=paper PYTHON=$(abspath $(BIN)/python) 2>&1 | tee -a paper/make.log

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf demo experiment .pytest_cache
