#!/usr/bin/env bash
# The GPU check: on a CUDA machine, in about 4 minutes (at most ~6), the project's CUDA tests and the
# figures the README quotes for a GPU, as one markdown table printed row by row (bench/gpu_check.py says
# what each row measures). The table also goes to $OUT/gpu_check.md when OUT is set (else
# /tmp/curate-gpu-check.md), every section's output to gpu_check.log beside it.
#
#   bash bench/gpu_check.sh                # arguments go to bench/gpu_check.py (--workers N, --budget S)
#   bash bench/gpu_check.sh --smoke        # toy sizes, every row, on a CPU in about 1.5 minutes
#   PYTHON=python3 bash bench/gpu_check.sh # the interpreter (default: .venv's if there is one, else python3)
#
# Installs nothing from a registry. A machine without one gets the missing packages as wheels in .whl/
# (open_clip_torch, ftfy, wcwidth, duckdb, braceexpand) when it cannot import them: they go to a private
# --target folder, first on PYTHONPATH. gpu_check.py puts this checkout's curate and CLI first on
# PYTHONPATH too, whatever is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import open_clip, ftfy, duckdb, braceexpand" 2>/dev/null; then
  SITE=$(mktemp -d /tmp/curate-gpu-check-site.XXXX)
  echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .whl/*.whl || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

# gpu_check.py keeps to its --budget (330 s by default); this is the backstop if it cannot.
timeout -k 10 420 "$PY" bench/gpu_check.py "$@"
