# Does masking false negatives, or removing near duplicates first, change what joint selection buys?
# examples/pipeline.mk per seed on two crawls, the default hard crawl and one of CONCEPTS concepts (where
# most pairs in a batch show the same thing), with independent and JEST selection, each with and without
# the false-negative mask and dedup; then one results table per crawl.
#   make -f examples/false_negatives.mk -j2 CURATE=curate PYTHON=python   # or `make false-negatives`
CURATE ?= curate
PYTHON ?= python
OUT ?= false-negatives
SEEDS ?= 0 1 2
CONCEPTS ?= 10
CRAWLS = default concepts
LEARNERS ?= uniform independent jest jest-mask learnability learnability-mask independent-dedup jest-dedup \
	jest-mask-dedup
# pipeline.mk's hard crawl; the few-concept crawl adds --concepts
HARD = --zipf 1.5 --misaligned 0.25 --junk 0.12 --partial 0.12 --duplicate 0.08 --eval-per-class 16
SYNTH_default = $(HARD)
SYNTH_concepts = $(HARD) --concepts $(CONCEPTS)
SETTINGS ?=
DONE = $(foreach crawl,$(CRAWLS),$(foreach seed,$(SEEDS),$(OUT)/$(crawl)/seed$(seed)/.learners))

.PHONY: all
all: $(foreach crawl,$(CRAWLS),$(OUT)/$(crawl)/results.md)

# A seed's learners on one crawl: a sub-make sharing this make's job slots. Precious: made by a pattern
# rule, make would otherwise delete the stamps as intermediates, and a re-run would redo every sub-make.
.PRECIOUS: $(OUT)/%/.learners
$(OUT)/%/.learners:
	+$(MAKE) --no-print-directory -f examples/pipeline.mk OUT=$(@D) SEED=$(subst seed,,$(notdir $(@D))) \
		CURATE=$(CURATE) LEARNERS="$(LEARNERS)" SYNTH_FLAGS="$(SYNTH_$(notdir $(patsubst %/,%,$(dir $*))))" \
		$(SETTINGS) learners && touch $@

$(OUT)/%/results.md: $(DONE)
	$(PYTHON) examples/results_table.py $(foreach seed,$(SEEDS),$(OUT)/$*/seed$(seed)) > $@.tmp && mv $@.tmp $@
	cat $@
