# The curate pipeline as plain commands; copy it and point it at your own shards and models.
#   make -f examples/pipeline.mk                  # synthetic data into ./demo
#   make -f examples/pipeline.mk OUT=run1 N=5000
CURATE ?= curate
OUT ?= demo
N ?= 20000
SEED ?= 0

.PHONY: all data

all: data
	@echo "synthetic web crawl: $(OUT)/data/web   curated: $(OUT)/data/curated   eval: $(OUT)/data/eval"

# 1. A noisy synthetic web crawl, its small clean curated set and an eval set.
data: $(OUT)/data/web/sizes.json
$(OUT)/data/web/sizes.json:
	$(CURATE) synth $(OUT)/data --n $(N) --seed $(SEED)
