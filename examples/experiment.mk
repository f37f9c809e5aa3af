# docs/results/experiments.md's table: examples/pipeline.mk once per seed, every learner, then the table.
#   make -f examples/experiment.mk -j2 CURATE=curate PYTHON=python   # or `make experiment`
# Each seed's pipeline is a sub-make sharing this make's job slots, so -jN runs N steps at once across seeds;
# each is resumable on its own (see pipeline.mk), and a seed whose report exists is done.
CURATE ?= curate
PYTHON ?= python
OUT ?= experiment
SEEDS ?= 0 1 2
LEARNERS ?= uniform uniform-3x uniform-5x random clipscore negclip independent jest jest-set learnability online
REPORTS = $(foreach seed,$(SEEDS),$(OUT)/seed$(seed)/report/index.html)

.PHONY: all
all: $(OUT)/results.md

$(OUT)/seed%/report/index.html:
	+$(MAKE) --no-print-directory -f examples/pipeline.mk OUT=$(OUT)/seed$* SEED=$* CURATE=$(CURATE) \
		LEARNERS="$(LEARNERS)" report

$(OUT)/results.md: $(REPORTS)
	$(PYTHON) examples/results_table.py $(foreach seed,$(SEEDS),$(OUT)/seed$(seed)) > $@.tmp && mv $@.tmp $@
	cat $@
