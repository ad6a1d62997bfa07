#!/usr/bin/env bash
# GPU-ready in one script (about 8 minutes on one GPU): what a GPU machine should measure first.
#   1. the classifier with an SD-1.5-size UNet at bf16 (SDPA, speed levers on): evaluations/s and fraction of bf16 peak,
#      against the reference loop, alternating, >= 3 runs each;
#   2. a DreamBooth training step, plain vs DC (live teacher) vs DC with the teacher cache, SD-1.5 size;
#   3. the full-size rehearsal at 512 px (SD-1.5, DreamBooth and LoRA, plain and DC, one training step each, the runner,
#      the report; the CPU rehearsal covers all four methods).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (prints everything; the rehearsal's table is last)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_check}}; mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OPEN_FORGETTING_DEVICE=cuda
echo "gpu_check: $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null), load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

echo "== 1. classifier, SD-1.5-size UNet, bf16 =="
timeout 200 $PY benchmarks/classifier.py --gpu --runs 3 --images 4 --compile 2>&1 | tail -25
echo "== 2. training step, SD-1.5 size: plain vs DC vs DC with the teacher cache =="
timeout 150 $PY benchmarks/train.py --gpu --methods dreambooth --variants plain dc dc_cached --runs 3 --steps 3 2>&1 | tail -20
echo "== 3. full-size rehearsal, SD-1.5 at 512 px =="
timeout 200 $PY benchmarks/rehearse_full_size.py --arch sd15 --out "$OUT/rehearsal" --train-resolution 512 \
    --classifier-resolution 512 --generation-resolution 512 --methods dreambooth,lora --variants plain,dc --extra-experiments "" 2>&1 | tail -30
echo "gpu_check: done $(date -u +%FT%TZ)"
