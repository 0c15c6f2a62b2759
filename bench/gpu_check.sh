#!/usr/bin/env bash
# Every GPU figure of issue 16 in one short run (a few minutes on an H200): training steps at the
# papers' sizes (source 720x1280, target 512x1024, batch 1) in fp32 and bf16, the released
# AdaptSegNet step on the same GPU, and scoring 500 Cityscapes-val-sized images.
#
#   ORIGINAL=/path/to/AdaptSegNet OUT=results bash bench/gpu_check.sh
#
# ORIGINAL: a checkout of wasidennis/AdaptSegNet (its model/ folder is all that is used);
# without one the released step is skipped. Appends one JSON line per figure to
# $OUT/gpu_check.jsonl; train_speed.py's lines carry s/step, peak memory and achieved TFLOP/s.
set -u
OUT=${OUT:-.}
ORIGINAL=${ORIGINAL:-runs/AdaptSegNet}
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
PAPER="--depth 101 --source-size 720x1280 --target-size 512x1024 --steps 10 --warmup 3"
run() { echo "+ $*" >&2; "$@" | tee -a "$LOG"; }

$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >&2
if [ -f "$ORIGINAL/model/deeplab_multi.py" ]; then
  run $PY bench/original_adaptsegnet_step.py --original-repo "$ORIGINAL" \
    --source-size 720x1280 --target-size 512x1024 --steps 10 --warmup 3
fi
for precision in fp32 bf16; do
  run $PY bench/train_speed.py $PAPER --method adaptsegnet --multi-level \
    --set model.aspp_branches=2 --precision $precision
  run $PY bench/train_speed.py $PAPER --method adaptsegnet --multi-level \
    --set model.aspp_branches=2 --precision $precision --channels-last \
    --optimizer-implementation fused
  run $PY bench/train_speed.py $PAPER --method source_only --precision $precision
done
# torch.compile: its compile time is the first steps' (warm-up) time; s/step after it.
run $PY bench/train_speed.py $PAPER --method adaptsegnet --multi-level \
  --set model.aspp_branches=2 --precision bf16 --channels-last --compile --warmup 3
run $PY bench/profile_step.py --depth 101 --source-size 720x1280 --target-size 512x1024 \
  --method adaptsegnet --multi-level --precision bf16 --channels-last --steps 3
run $PY bench/eval_speed.py --images 500 --batch-size 1
run $PY bench/eval_speed.py --images 500 --batch-size 4 --precision bf16 --channels-last
run $PY bench/data_speed.py --count 6 --repeats 2
