#!/usr/bin/env bash
# The GPU check: on a CUDA machine, in a few minutes, the project's CUDA tests, then the figures docs/results/benchmarks.md
# quotes for a GPU, each section's table printed as it finishes (and kept in $OUT/gpu_check.md if OUT is set):
#   bash bench/gpu_check.sh                 # PYTHON=... to choose the interpreter (default: .venv's, else python3)
#   SMOKE=1 bash bench/gpu_check.sh         # section 4 alone at toy size, to check the script on a CPU
#   SECTIONS="1 2" bash bench/gpu_check.sh  # some sections only
# 1. CUDA tests (tests/test_jest.py: the streaming kernels on CUDA against the CPU and the dense matrix)
# 2. the JEST select kernel at the paper's scale: B = 327,680, f = 0.9 (b = 32,768), D = 768, bf16, against a
#    plain bf16 matmul of the same FLOPs in the same process (bench/select_kernel.py)
# 3. curate score with ViT-B-16 at 224 px (random weights, bf16) end to end against its model-only forward
#    (bench/score_throughput.py)
# 4. curate train --device auto (bf16 autocast) of siglip-tiny and of ViT-B-16: samples/s and model TFLOP/s
#    from metrics.jsonl, then curate score and curate select on CUDA with the tiny run's checkpoint.
# 5. Flexi-JEST's two ratios for ViT-B-16, 224 -> 112 px, bf16: curate score --resolution against full
#    resolution (bench/score_resolution.py), and an online JEST step at F = 0.8 scoring (and half-training)
#    at 112 px against a plain step (bench/online_jest_step.py). Not in the default list: run with
#    SECTIONS="5" (or "1 2 3 4 5") when there is time for it.
# 6. many GPUs (a machine with more than one): curate train under torchrun on every GPU against one GPU,
#    ViT-B-16 (random weights, bf16), global b = 256 (b / W a GPU), plain and online JEST (F = 0.8) with the
#    global and local scopes; samples/s, the scaling, global's step over local's and the exchange's share
#    (bench/train_scaling.py). Estimated at 5 to 7 minutes (10 runs, each starting torch and the process
#    group afresh; cut at 7 by its timeout), so not in the default list: run with SECTIONS="6" (or
#    "1 2 3 4 6"). A machine with one GPU prints "one GPU: skipped".
# Installs nothing over the network: with a folder .whl/ of wheels (what a machine without a registry
# needs: open_clip_torch, ftfy, wcwidth, duckdb, braceexpand, webdataset), they go to a private --target folder
# first, unless the interpreter already has them.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WORK=$(mktemp -d /tmp/curate-gpu-check.XXXX)
REPORT=${OUT:-$WORK}/gpu_check.md

if [ -d .whl ] && ! $PY -c "import open_clip, duckdb, webdataset, ftfy, braceexpand" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The CLI package lives in cli/ and installs as curate_cli: without an install, a one-line shim finds it.
if ! $PY -c "import curate_cli" 2>/dev/null; then
  mkdir -p "$WORK/shim/curate_cli"
  echo "__path__ = ['$PWD/cli']" >"$WORK/shim/curate_cli/__init__.py"
  export PYTHONPATH="$WORK/shim:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
CURATE="$PY -m curate_cli"

section() { echo; echo "## $1" | tee -a "$REPORT"; }
keep() { tee -a "$REPORT"; }

{ echo "# curate GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $PY -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, \
'cuda', torch.cuda.is_available())"; } 2>&1 | keep

SMOKE=${SMOKE:-}
SECTIONS=${SECTIONS:-$([ -n "$SMOKE" ] && echo 4 || echo 1 2 3 4)}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

if want 1; then
section "1. CUDA tests"
timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_jest.py 2>&1 | tail -4 | keep
fi

if want 2; then
section "2. select kernel at the paper's scale (bf16)"
timeout 300 $PY bench/select_kernel.py --device cuda --sizes 327680 --dims 768 --ratio 0.9 --dtype bfloat16 \
  --repeats 3 2>&1 | keep
fi

if want 3; then
section "3. scoring ViT-B-16, 224 px, random weights (bf16): end to end vs model-only forward"
timeout 420 $PY bench/score_throughput.py --model ViT-B-16 --device cuda --n 8192 --batch-size 512 \
  --workers 12 2>&1 | grep -v Warning | keep
fi

if want 4; then
section "4. curate train --device auto (bf16), then score and select on CUDA"
train_row() {  # model, batch, steps, image size
  local model=$1 batch=$2 steps=$3 size=$4 data="$WORK/data$4" run="$WORK/run-$1"
  [ -d "$data/web" ] || $CURATE synth "$data" --n "$([ -n "$SMOKE" ] && echo 1024 || echo 8192)" \
    --image-size "$size" --samples-per-shard 1024 --eval-per-class 1 --workers 8 >/dev/null 2>&1
  if timeout 300 $CURATE train "$data/web" -o "$run" --model "$model" --batch-size "$batch" --steps "$steps" \
      --warmup 5 --log-every 10 --save-every 0 --workers 8 --device auto --cache memory >"$run.log" 2>&1; then
    $PY - "$run" "$model" "$batch" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl") if '"loss"' in line]
first, last = records[0], records[-1]  # the rate between the first and the last log line: start-up left out
seconds, flops = last["seconds"] - first["seconds"], last["flops"] - first["flops"]
samples = (last["step"] - first["step"]) * int(sys.argv[3])
print(f"| {sys.argv[2]} | {sys.argv[3]} | {last['step']} | {samples / seconds:.0f} | "
      f"{1e3 * seconds / (last['step'] - first['step']):.1f} | {flops / seconds / 1e12:.1f} | {last['loss']:.3f} |")
EOF
  else
    echo "| $model | $batch | failed: $(tail -1 "$run.log") | | | | |"
  fi
}
{ echo "| model | batch | steps | samples/s | ms/step | model TFLOP/s (3 forwards/sample) | final loss |"
  echo "|---|---|---|---|---|---|---|"
  if [ -n "$SMOKE" ]; then train_row siglip-tiny 64 20 32; else
    train_row siglip-tiny 1024 60 32
    [ -n "${NO_VIT_TRAIN:-}" ] || train_row ViT-B-16 256 40 224
  fi; } 2>&1 | keep
{ timeout 200 $CURATE score "$WORK/data32/web" -o "$WORK/scores" --model "$WORK/run-siglip-tiny/latest.pt" \
    --workers 8 --device auto 2>&1 | tail -1
  timeout 200 $CURATE select "$WORK/scores" -o "$WORK/manifest" --ratio 0.8 --batch-size 512 \
    --device auto 2>&1 | tail -1; } | keep
fi
if want 5; then
section "5. Flexi-JEST, ViT-B-16 224 -> 112 px (bf16): low-resolution scoring and online JEST step cost"
timeout 300 $PY bench/score_resolution.py --model ViT-B-16 --resolution 112 --device cuda --n 8192 --workers 12 \
  --batch-size 512 --runs 3 2>&1 | grep -v Warning | keep
timeout 300 $PY bench/online_jest_step.py --model ViT-B-16 --resolution 112 --device cuda --batch-size 256 \
  --runs 3 --steps 3 2>&1 | grep -v Warning | keep
fi
if want 6; then
section "6. many GPUs: curate train under torchrun, every GPU against one (ViT-B-16, bf16)"
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -gt 1 ]; then
  # b = 256 splits over 2, 4, 8 or 16 GPUs; another count gets 32 a GPU.
  batch=$(( 256 % gpus ? 32 * gpus : 256 ))
  timeout 420 $PY bench/train_scaling.py --device auto --processes "$gpus" --model ViT-B-16 --precision bf16 \
    --batch-size "$batch" --steps 30 --log-every 5 --runs 2 --n 2048 --image-size 224 --workers 4 \
    --timeout 200 2>&1 | grep -v Warning | keep
else
  echo "one GPU: skipped" | keep
fi
fi
echo; echo "report: $REPORT"
