# The whole curate pipeline as plain commands: copy this file and point it at your own shards and models.
#   make -f examples/pipeline.mk                      # synthetic data, everything under ./demo
#   make -f examples/pipeline.mk OUT=run2 SEED=2      # another seed
# Every step writes its outputs atomically and is skipped by make once done, so an interrupted run resumes.
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
TRAIN = $(CURATE) train --model $(MODEL) --batch-size $(BATCH) --lr $(LR) --warmup $(WARMUP) --seed $(SEED) \
	--workers $(WORKERS) --eval $(OUT)/data/eval --eval-every $(EVAL_EVERY)
# One batch per learner step: as many seeded passes over the crawl as STEPS batches of BATCH need.
SELECT = $(CURATE) select $(OUT)/scores/reference --ratio $(RATIO) --batch-size $(BATCH) --steps $(STEPS) \
	--seed $(SEED) --shards $(OUT)/data/web

# jest-set: JEST's selection trained as a set (--order shuffle); clipscore and negclip: the global filters
# users run instead (DataComp's CLIP score, negCLIPLoss), at the same ratio. EXTRA_LEARNERS adds runs to
# the report (the 3-seed experiment sets EXTRA_LEARNERS="jest-set negclip").
LEARNERS = uniform jest independent random learnability clipscore online $(EXTRA_LEARNERS)
EXTRA_LEARNERS ?=
.PHONY: all data reference learners report clean
all: report
	@echo "report: $(OUT)/report/index.html"

# 1. A noisy synthetic web crawl, its small clean curated set and an eval set.
data: $(OUT)/data/web/sizes.json
$(OUT)/data/web/sizes.json:
	$(CURATE) synth $(OUT)/data --n $(N) --seed $(SEED) $(SYNTH_FLAGS)

# 2. A reference model trained on the curated set, then its scores of the whole crawl (.done holds the
#    seconds scoring took, for the results table's cost column).
$(OUT)/runs/reference/latest.pt: $(OUT)/data/web/sizes.json
	$(TRAIN) $(OUT)/data/curated -o $(OUT)/runs/reference --steps $(REF_STEPS)
$(OUT)/scores/reference/.done: $(OUT)/runs/reference/latest.pt
	start=$$(date +%s); $(CURATE) score $(OUT)/data/web -o $(OUT)/scores/reference --model $< --workers $(WORKERS) \
		&& echo $$(( $$(date +%s) - start )) > $@

# 3. The uniform (IID) learner on the whole crawl; its early checkpoint scores the crawl as the learner.
$(OUT)/runs/uniform/latest.pt: $(OUT)/data/web/sizes.json
	$(TRAIN) $(OUT)/data/web -o $(OUT)/runs/uniform --steps $(STEPS) --save-every $(EARLY)
$(OUT)/scores/learner/.done: $(OUT)/runs/uniform/latest.pt
	start=$$(date +%s); $(CURATE) score $(OUT)/data/web -o $(OUT)/scores/learner \
		--model $(OUT)/runs/uniform/checkpoints/step_$(EARLY).pt --workers $(WORKERS) \
		&& echo $$(( $$(date +%s) - start )) > $@

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
$(OUT)/curated/sizes.json: $(OUT)/manifests/jest/manifest.parquet
	$(CURATE) export $(OUT)/manifests/jest -o $(OUT)/curated

# 5. Learners with the same steps and batch size: each offline selection's batches in order (step t trains
#    batch t), JEST's as a shuffled set, and online JEST.
$(OUT)/runs/%/latest.pt: $(OUT)/manifests/%/manifest.parquet
	$(TRAIN) $(OUT)/data/web -o $(OUT)/runs/$* --steps $(STEPS) --manifest $(OUT)/manifests/$*
$(OUT)/runs/jest-set/latest.pt: $(OUT)/manifests/jest/manifest.parquet
	$(TRAIN) $(OUT)/data/web -o $(OUT)/runs/jest-set --steps $(STEPS) --manifest $(OUT)/manifests/jest \
		--order shuffle
$(OUT)/runs/online/latest.pt: $(OUT)/scores/reference/.done
	$(TRAIN) $(OUT)/data/web -o $(OUT)/runs/online --steps $(STEPS) --online-jest --ref $(OUT)/scores/reference \
		--ratio $(RATIO)
# online first: the longest run, so under make -j it starts as soon as the reference scores exist.
learners: $(OUT)/runs/online/latest.pt $(foreach run,$(LEARNERS),$(OUT)/runs/$(run)/latest.pt) \
	$(OUT)/curated/sizes.json

# 6. Every learner and the reference on the eval set, and the comparison page.
report: learners
	$(CURATE) report $(OUT)/runs/reference $(foreach run,$(LEARNERS),$(OUT)/runs/$(run)) \
		--manifest $(OUT)/manifests/jest --scores $(OUT)/scores/reference --shards $(OUT)/data/web -o $(OUT)/report

clean:
	rm -rf $(OUT)
