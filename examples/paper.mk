# The paper's further claims, measured with curate on the experiment crawl (`make paper`).
#   make -f examples/paper.mk -j2 CURATE=curate PYTHON=python     # or `make paper`
# Per seed, examples/pipeline.mk makes the crawl, the reference and its scores, the early learner's scores
# and the 200-step learners; every other setting lives in a folder of its own beside them, whose data,
# reference run and score folders are links to the seed's, so nothing upstream is made twice:
#   seedS/ratio-F/     F in RATIOS (beside the pipeline's 0.8): JEST and independent learners at filter ratio
#                      F, and JEST's learnability selection (selection only: its batches' learnability)
#   seedS/steps-K/     K in BUDGETS (beside the pipeline's 200): uniform, JEST and the CLIP-score filter, each
#                      trained with its own schedule of K steps (warmup K/2, as the pipeline's 100 of 200)
#   seedS/big/         siglip-small learners (uniform, uniform-3x, CLIP-score, JEST) steered by the
#                      siglip-tiny reference, BIG_STEPS steps
#   seedS/chunks.json  selection only: the learnability of the batch JEST draws in N chunks and of a long
#                      swap chain (the Gibbs oracle) on the same super-batches (examples/chunks_vs_gibbs.py)
# Then $(OUT)/paper.md (examples/paper_tables.py): each claim's verdict and the tables; $(OUT)/figures.
# Resumable (make skips what is done; a killed run resumes from its checkpoint), -j aware.
# Time, an estimate from the step counts (siglip-tiny 0.6 s a step of 64 on one core as in `make
# experiment`; siglip-small 2.85 s, evaluations every 50 steps included, measured with two runs at once on
# the 2 cores): per seed about 4,100 siglip-tiny steps and 1,200 siglip-small ones, in all about 4 hours
# (3.5 to 5) with -j2 on 2 cores. Shorter: BIG_STEPS=100 (about an hour less), BUDGETS=100 (about 20
# minutes less), EVAL_EVERY=40 (about 15 less).
# At toy size (as tests/test_pipeline.py runs the pipeline; minutes):
#   make -f examples/paper.mk OUT=/tmp/paper-toy CURATE=curate PYTHON=python SEEDS=0 N=300 REF_STEPS=4 \
#     STEPS=4 BATCH=16 EARLY=2 WORKERS=0 BUDGETS="2 8" BIG_STEPS=4 \
#     CHUNK_FLAGS="--super-batches 2 --gibbs-steps 400"
CURATE ?= curate
PYTHON ?= python
OUT ?= paper
SEEDS ?= 0 1 2
RATIOS ?= 0.5 0.9
BUDGETS ?= 100 400
# The siglip-small learners train the pipeline's 200 steps (uniform-3x 600), as long as their reference:
# with fewer, the bootstrapping claim is read before the learner could have passed it. On 2 cores the
# twelve runs took 89 minutes two at a time, longest first (docs/results/experiments.md), the order the
# rules below give -j2.
BIG_STEPS ?= 200
CHUNK_COUNTS ?= 1 2 4 16
# The pipeline's batch size and filter ratio (its defaults; a value given on the command line reaches the
# pipeline too), at which the chunks experiment draws its batches; CHUNK_FLAGS: more of its options.
BATCH ?= 64
RATIO ?= 0.8
CHUNK_FLAGS ?= --super-batches 16
# What the pipeline makes once per seed: the crawl and reference, and the learners every table compares to
# (learnability needs the early learner's scores, which uniform's checkpoint gives).
BASE_LEARNERS = uniform uniform-3x clipscore independent jest learnability
BUDGET_LEARNERS = uniform jest clipscore
BIG_LEARNERS = uniform-3x jest clipscore uniform
# Each line that runs it starts with `+`, so that it shares this make's job slots (make sees $(MAKE) only
# when written in the line itself); a `+` inside the variable would reach the shell after `&&` in a loop.
PIPELINE = $(MAKE) --no-print-directory -f examples/pipeline.mk CURATE="$(CURATE)"
# A setting's folder $(1): links to its seed's crawl, score folders, reference run and the runs $(2), so
# the pipeline run there finds them done and makes only the setting's own selections and learners.
link_setting = mkdir -p $(1)/runs && ln -sfn ../data $(1)/data && ln -sfn ../scores $(1)/scores \
	$(foreach r,reference $(2),&& ln -sfn ../../runs/$(r) $(1)/runs/$(r))

.PHONY: all
all: $(OUT)/paper.md

$(OUT)/seed%/.base:
	+$(PIPELINE) OUT=$(@D) SEED=$* $(foreach l,$(BASE_LEARNERS),$(@D)/runs/$(l)/.done)
	touch $@

# At each F, JEST's learnability selection too (selection only: its summary's batch learnability), for which
# uniform, whose early checkpoint scored the learner's scores, is linked as done.
RATIO_TARGETS = runs/jest/.done runs/independent/.done manifests/learnability/manifest.parquet
$(OUT)/seed%/.ratio: $(OUT)/seed%/.base
	+$(foreach f,$(RATIOS),$(call link_setting,$(@D)/ratio-$(f),uniform) && $(PIPELINE) OUT=$(@D)/ratio-$(f) \
		SEED=$* RATIO=$(f) $(addprefix $(@D)/ratio-$(f)/,$(RATIO_TARGETS)) &&) true
	touch $@

# Warmup K/2, the pipeline's 100 of 200.
$(OUT)/seed%/.budgets: $(OUT)/seed%/.base
	+$(foreach k,$(BUDGETS),$(call link_setting,$(@D)/steps-$(k)) && $(PIPELINE) OUT=$(@D)/steps-$(k) SEED=$* \
		STEPS=$(k) WARMUP=$$(( $(k) / 2 )) $(foreach l,$(BUDGET_LEARNERS),$(@D)/steps-$(k)/runs/$(l)/.done) &&) true
	touch $@

# The bigger learners one target each (not one pipeline call a seed), so that -j runs them across seeds;
# paper.md lists them first, the longest first.
$(OUT)/seed%/big/.linked: $(OUT)/seed%/.base
	$(call link_setting,$(@D)) && touch $@
define big_learner
$(OUT)/seed%/big/runs/$(1)/.done: $(OUT)/seed%/big/.linked
	+$$(PIPELINE) OUT=$(OUT)/seed$$*/big SEED=$$* MODEL=siglip-small STEPS=$(BIG_STEPS) \
		WARMUP=$$$$(( $(BIG_STEPS) / 2 )) $$@
endef
$(foreach l,$(BIG_LEARNERS),$(eval $(call big_learner,$(l))))
$(OUT)/seed%/.big: $(foreach l,$(BIG_LEARNERS),$(OUT)/seed%/big/runs/$(l)/.done)
	touch $@
# Made by pattern rules only: without this make would delete them as intermediates when it ends.
.PRECIOUS: $(OUT)/seed%/big/.linked $(foreach l,$(BIG_LEARNERS),$(OUT)/seed%/big/runs/$(l)/.done)

$(OUT)/seed%/chunks.json: $(OUT)/seed%/.base
	$(PYTHON) examples/chunks_vs_gibbs.py $(@D)/scores/reference $(@D)/scores/learner --chunks $(CHUNK_COUNTS) \
		--seed $* --batch-size $(BATCH) --ratio $(RATIO) $(CHUNK_FLAGS) -o $@

SETTINGS = .base .ratio .budgets .big chunks.json
$(OUT)/paper.md: $(foreach l,$(BIG_LEARNERS),$(foreach s,$(SEEDS),$(OUT)/seed$(s)/big/runs/$(l)/.done)) \
		$(foreach s,$(SEEDS),$(foreach t,$(SETTINGS),$(OUT)/seed$(s)/$(t)))
	$(PYTHON) examples/paper_tables.py $(foreach s,$(SEEDS),$(OUT)/seed$(s)) --figures $(OUT)/figures > $@.tmp
	mv $@.tmp $@
	cat $@
