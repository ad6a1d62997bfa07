#!/usr/bin/env bash
# GPU-ready in one script (about 10 minutes on one H200; a 15-minute lease holds one run of it): what a GPU machine
# should measure first. First run 2026-12-04 (H200): sections 0, 1 and half of 3 passed, 2 failed on a bug fixed since.
#   0. the package imports (fails in seconds, not after the first benchmark, when a dependency is missing);
#   1. the classifier with an SD-1.5-size UNet at bf16 (SDPA, measured batch, prefix sharing), the protocol's CIFAR-10
#      schedule (2,750 UNet evaluations per image): seconds per image and fraction of bf16 peak, against the reference
#      loop, alternating, 3 runs each of one image (~9 s per image on an H200);
#   2. a DreamBooth training step, plain vs DC (live teacher) vs DC with the teacher cache, SD-1.5 size;
#   3. the full-size rehearsal at 512 px (SD-1.5 in the study's default dtype, bf16 on a GPU; DreamBooth plain and DC,
#      one training step each, the runner, the report; host and GPU peak memory): ~350 s on an H200 (in fp32), of
#      which ~140 s per method x variant; the CPU rehearsal covers all four methods;
#   4. lever: the classifier again with torch.compile (inductor), if at least 90 s of DEADLINE_S are left.
# On a machine without network whose python lacks diffusers, open_clip, papermill and the kernel: fetch
# benchmarks/gpu_wheels.txt here as cp312 manylinux wheels into .whl/ (POT 0.9.5: 0.9.7's wheel is 33 MB), carry them,
# `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` there, PYTHONPATH=/tmp/site:$PWD PY=python3.
# Usage: bash benchmarks/gpu_check.sh [LOG_DIR]   (each section's full log is written to LOG_DIR; the rehearsal's
# models and runs go to $REHEARSAL_DIR, default /tmp/gpu_rehearsal, so that they do not land among the logs)
# SECTIONS picks and orders sections 1-4 (default: "classifier train rehearsal compile"): a lease shorter than the
# whole script runs what is still unmeasured first, e.g. SECTIONS="train compile rehearsal" (sections 1 and 3 ran on
# the H200 on 2026-12-04; 2 failed on a bug fixed since, 4 timed out compiling).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-${OUT:-/tmp/gpu_check}}; mkdir -p "$LOG"
REHEARSAL_DIR=${REHEARSAL_DIR:-/tmp/gpu_rehearsal}
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python3
SECTIONS=${SECTIONS:-classifier train rehearsal compile}
for s in $SECTIONS; do   # checked before anything runs
    case $s in classifier|train|rehearsal|compile) ;;
    *) echo "gpu_check: unknown section '$s' in SECTIONS=\"$SECTIONS\": use classifier, train, rehearsal, compile"; exit 2 ;; esac
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OPEN_FORGETTING_DEVICE=cuda PYTHONUNBUFFERED=1
echo "gpu_check: $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
section() {   # section NAME TIMEOUT_S COMMAND...: run it with a time limit, its log in LOG/NAME.log, its exit status printed
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1; local rc=$?
    tail -n 30 "$LOG/$name.log"
    echo "-- $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)"
}
echo "== 0. imports =="
$PY -c "import open_forgetting.study, open_forgetting.classifier, open_forgetting.train, open_forgetting.runner, diffusers, open_clip, \
transformers, papermill, ipykernel, ot; print('imports ok: diffusers', diffusers.__version__, 'transformers', transformers.__version__)" || exit 1

classifier() {
    echo "== 1. classifier, SD-1.5-size UNet, bf16 =="
    section classifier 120 $PY benchmarks/classifier.py --device cuda --sd15 --runs 3 --images 1
}
train() {
    echo "== 2. training step, SD-1.5 size: plain vs DC vs DC with the teacher cache =="
    section train 120 $PY benchmarks/train.py --gpu --methods dreambooth --variants plain dc dc_cached --runs 3 --steps 3
}
rehearsal() {
    echo "== 3. full-size rehearsal, SD-1.5 at 512 px =="
    section rehearsal 330 $PY benchmarks/rehearse_full_size.py --arch sd15 --out "$REHEARSAL_DIR" --train-resolution 512 \
        --classifier-resolution 512 --generation-resolution 512 --methods dreambooth --variants plain,dc --extra-experiments ""
}
compile() {
    local left=$(( ${DEADLINE_S:-900} - SECONDS ))   # DEADLINE_S: seconds this script may take in all (a lease's limit)
    if [ "$left" -ge 90 ]; then
        echo "== 4. lever: classifier with torch.compile =="
        section classifier_compile $(( left < 200 ? left : 200 )) $PY benchmarks/classifier.py --device cuda --sd15 --runs 3 --images 1 --compile
    else echo "== 4. skipped: $left s of DEADLINE_S left =="; fi
}
for s in $SECTIONS; do $s; done
echo "gpu_check: done $(date -u +%FT%TZ)"
