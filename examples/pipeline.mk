# The whole curate pipeline as plain commands: copy this file and point it at your own shards and models.
#   make -f examples/pipeline.mk                      # synthetic data, everything under ./demo
#   make -f examples/pipeline.mk OUT=run2 SEED=2      # another seed
# Every step writes its outputs atomically and is skipped by make once done (a `.done` stamp marks a finished
# run or score folder), and a run that was interrupted resumes from its last checkpoint.
CURATE ?= curate
OUT ?= demo
SEED ?= 0
# noisy web pairs; the model of the reference and of every learner
N ?= 20000
# A hard crawl: a steep long tail of classes (the eval set is balanced) and 58% noisy pairs, so that what
# a selection keeps, and how it mixes a batch, shows in the learners' accuracy.
SYNTH_FLAGS ?= --zipf 1.5 --misaligned 0.25 --junk 0.12 --partial 0.12 --duplicate 0.08 --eval-per-class 16
MODEL ?= siglip-tiny
# steps of the reference (on the curated set) and of every learner, all with the same batch size
REF_STEPS ?= 200
STEPS ?= 200
BATCH ?= 64
# JEST filtering ratio F (keep 20% of each super-batch); the uniform learner's checkpoint whose scores
# serve as --learner for the learnability criterion
RATIO ?= 0.8
EARLY ?= 50
WORKERS ?= 1
EVAL_EVERY ?= 20
LR ?= 1e-3
WARMUP ?= 100
# A checkpoint every SAVE_EVERY steps: what an interrupted run resumes from (and the early learner's).
SAVE_EVERY ?= $(EARLY)
TRAIN = $(CURATE) train --model $(MODEL) --batch-size $(BATCH) --lr $(LR) --warmup $(WARMUP) --seed $(SEED) \
	--workers $(WORKERS) --eval $(OUT)/data/eval --eval-every $(EVAL_EVERY) --save-every $(SAVE_EVERY) \
	-o $(@D) $(if $(wildcard $(@D)/latest.pt),--resume)
# One batch per learner step: as many seeded passes over the crawl as STEPS batches of BATCH need.
SELECT = $(CURATE) select $(OUT)/scores/reference --ratio $(RATIO) --batch-size $(BATCH) --steps $(STEPS) \
	--seed $(SEED) --shards $(OUT)/data/web

# uniform-3x: uniform trained 3x as long, the compute-matched baseline (any uniform-Kx trains K x STEPS).
# jest-set: JEST's selection trained as a set (--order shuffle); clipscore and negclip: the global filters
# users run instead (DataComp's CLIP score, negCLIPLoss), at the same ratio. `make demo` trains five of
# these, `make experiment` (examples/experiment.mk) all of them and uniform-5x.
LEARNERS ?= uniform uniform-3x jest independent random learnability clipscore online
.PHONY: all data learners report clean
all: report

# 1. A noisy synthetic web crawl, its small clean curated set and an eval set.
data: $(OUT)/data/web/sizes.json
$(OUT)/data/web/sizes.json:
	$(CURATE) synth $(OUT)/data --n $(N) --seed $(SEED) $(SYNTH_FLAGS)

# 2. A reference model trained on the curated set, then its scores of the whole crawl (each score file
#    records what it cost and the checkpoint that scored it, so a learner's report counts all of it).
$(OUT)/runs/reference/.done: $(OUT)/data/web/sizes.json
	$(TRAIN) $(OUT)/data/curated --steps $(REF_STEPS) && touch $@
$(OUT)/scores/reference/.done: $(OUT)/runs/reference/.done
	$(CURATE) score $(OUT)/data/web -o $(@D) --model $(OUT)/runs/reference/latest.pt --workers $(WORKERS) \
		&& touch $@

# 3. The uniform (IID) learner on the whole crawl, and for K times as many steps; uniform's early checkpoint
#    scores the crawl as the learner.
$(OUT)/runs/uniform/.done: $(OUT)/data/web/sizes.json
	$(TRAIN) $(OUT)/data/web --steps $(STEPS) && touch $@
$(OUT)/runs/uniform-%x/.done: $(OUT)/data/web/sizes.json
	$(TRAIN) $(OUT)/data/web --steps $$(( $* * $(STEPS) )) && touch $@
$(OUT)/scores/learner/.done: $(OUT)/runs/uniform/.done
	$(CURATE) score $(OUT)/data/web -o $(@D) --model $(OUT)/runs/uniform/checkpoints/step_$(EARLY).pt \
		--workers $(WORKERS) && touch $@

# 4. Offline selections at F = RATIO, STEPS batches each: JEST, independent and random with the reference
#    alone ("easy"), JEST on learnability (early learner − reference), and the global filters; then the JEST
#    selection as shards, in its training order.
$(OUT)/manifests/jest/manifest.parquet: $(OUT)/scores/reference/.done
	$(SELECT) -o $(OUT)/manifests/jest --method jest --criterion easy
$(OUT)/manifests/independent/manifest.parquet: $(OUT)/scores/reference/.done
	$(SELECT) -o $(OUT)/manifests/independent --method independent --criterion easy
$(OUT)/manifests/random/manifest.parquet: $(OUT)/scores/reference/.done
	$(SELECT) -o $(OUT)/manifests/random --method random --criterion easy
$(OUT)/manifests/clipscore/manifest.parquet: $(OUT)/scores/reference/.done
	$(SELECT) -o $(OUT)/manifests/clipscore --method clipscore
$(OUT)/manifests/negclip/manifest.parquet: $(OUT)/scores/reference/.done
	$(SELECT) -o $(OUT)/manifests/negclip --method negclip
$(OUT)/manifests/learnability/manifest.parquet: $(OUT)/scores/reference/.done $(OUT)/scores/learner/.done
	$(SELECT) -o $(OUT)/manifests/learnability --method jest --criterion learnability \
		--learner $(OUT)/scores/learner
# False negatives and near duplicates (beyond the paper): the reference's near-duplicate groups removed
# first (`curate dedup`, cosine of reference image embeddings above DEDUP_T), and/or JEST's cross terms
# masked where the reference sees two samples as the same thing (image-image or text-text cosine above
# MASK_T). Learners jest-mask, learnability-mask, independent-dedup, jest-dedup and jest-mask-dedup.
DEDUP_T ?= 0.998
MASK_T ?= 0.99
$(OUT)/keep/keep.parquet: $(OUT)/scores/reference/.done
	$(CURATE) dedup $(OUT)/scores/reference -o $(OUT)/keep --threshold $(DEDUP_T) --seed $(SEED)
$(OUT)/manifests/jest-mask/manifest.parquet: $(OUT)/scores/reference/.done
	$(SELECT) -o $(OUT)/manifests/jest-mask --method jest --criterion easy --false-negatives mask:$(MASK_T)
$(OUT)/manifests/learnability-mask/manifest.parquet: $(OUT)/scores/reference/.done $(OUT)/scores/learner/.done
	$(SELECT) -o $(OUT)/manifests/learnability-mask --method jest --criterion learnability \
		--learner $(OUT)/scores/learner --false-negatives mask:$(MASK_T)
# Made by a pattern rule, so make would delete them as intermediates once their run is trained: the report
# and the cost of a -dedup learner need them.
.PRECIOUS: $(OUT)/manifests/%-dedup/manifest.parquet $(OUT)/keep/keep.parquet
$(OUT)/manifests/%-dedup/manifest.parquet: $(OUT)/scores/reference/.done $(OUT)/keep/keep.parquet
	$(SELECT) -o $(OUT)/manifests/$*-dedup --keep $(OUT)/keep --criterion easy \
		--method $(if $(filter independent,$*),independent,jest) \
		$(if $(filter jest-mask,$*),--false-negatives mask:$(MASK_T))
$(OUT)/curated/sizes.json: $(OUT)/manifests/jest/manifest.parquet
	$(CURATE) export $(OUT)/manifests/jest -o $(OUT)/curated

# 5. Learners with the same steps and batch size: each offline selection's batches in order (step t trains
#    batch t), JEST's as a shuffled set, and online JEST.
$(OUT)/runs/%/.done: $(OUT)/manifests/%/manifest.parquet
	$(TRAIN) $(OUT)/data/web --steps $(STEPS) --manifest $(OUT)/manifests/$* && touch $@
$(OUT)/runs/jest-set/.done: $(OUT)/manifests/jest/manifest.parquet
	$(TRAIN) $(OUT)/data/web --steps $(STEPS) --manifest $(OUT)/manifests/jest --order shuffle && touch $@
$(OUT)/runs/online/.done: $(OUT)/scores/reference/.done
	$(TRAIN) $(OUT)/data/web --steps $(STEPS) --online-jest --ref $(OUT)/scores/reference --ratio $(RATIO) \
		&& touch $@
# Flexi-JEST: online JEST that scores each super-batch at FLEXI_RES px (a quarter of the tokens) and trains
# each batch half at full and half at FLEXI_RES, for FLEXI_STEPS: the steps whose total FLOPs equal online
# JEST's STEPS. For siglip-tiny at 32 -> 16 px one forward costs r = 0.479 of a full one (the text tower is
# not reduced), so a flexi step costs 3(1 + r)/2 + 5r = 4.61 forwards per trained sample against online's
# 3 + 5 = 8: FLEXI_STEPS = 200 x 8 / 4.61 = 347.
FLEXI_RES ?= 16
FLEXI_STEPS ?= 347
$(OUT)/runs/flexi/.done: $(OUT)/scores/reference/.done
	$(TRAIN) $(OUT)/data/web --steps $(FLEXI_STEPS) --online-jest --ref $(OUT)/scores/reference \
		--ratio $(RATIO) --score-resolution $(FLEXI_RES) --multi-resolution $(FLEXI_RES) && touch $@
# The longest runs first, then the reference and its scores (every selection waits on them): under make -j
# each starts as soon as a core is free.
learners: $(foreach run,$(filter online flexi uniform-%x,$(LEARNERS)),$(OUT)/runs/$(run)/.done) \
	$(OUT)/scores/reference/.done $(foreach run,$(LEARNERS),$(OUT)/runs/$(run)/.done) $(OUT)/curated/sizes.json

# 6. Every learner and the reference on the eval set, and the comparison page; its last lines, the headline:
#    each learner's top-1 and total compute (its reference's training and scoring counted) against uniform's.
report: learners
	$(CURATE) report $(OUT)/runs/reference $(foreach run,$(LEARNERS),$(OUT)/runs/$(run)) --baseline uniform \
		--manifest $(OUT)/manifests/jest --scores $(OUT)/scores/reference --shards $(OUT)/data/web -o $(OUT)/report

clean:
	rm -rf $(OUT)
