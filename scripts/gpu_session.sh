#!/usr/bin/env bash
# One lease of a lent CUDA machine, which reaches nothing outside: what it needs travels in pieces, one per call.
# Here (the payload: both targets' GGUF files from their PyPI packages and the chunk files, see gpu_train_feature.sh):
#   tar -cf /tmp/payload.tar -C DIR gemma-3-270m.gguf gemma-3-270m-chunks.pt [smollm2-135m.gguf smollm2-135m-chunks.pt]
#   split -b 60000000 -d -a 1 /tmp/payload.tar .gpu/piece
# There, one call per piece (carry .gpu/pieceN; the first call also carries .whl, with faiss-cpu among the wheels, and
# starts the CUDA checks in the background, so that they run while the other pieces travel):
#   bash scripts/gpu_session.sh receive [checks]
# and, with the last piece, the training of both drafters, one after the other, until FINISH_BY (a call lasts at most
# 10 minutes: start it with setsid in the background and collect $OUT's tars in later calls):
#   FINISH_BY=$(( $(date +%s) + 420 )) bash scripts/gpu_session.sh train
set -uo pipefail
OUT=${OUT:-/tmp/evospec-gpu}
mkdir -p /tmp/pieces "$OUT"
mv .gpu/piece* /tmp/pieces/ 2>/dev/null
ls -l /tmp/pieces
if [ ! -d /tmp/site/transformers ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
fi
export PYTHONPATH=/tmp/site
case "${1:-}" in
receive)
    if [ "${2:-}" = checks ]; then  # runs on after this call returns (its own session); logs in /tmp/checks
        OUT=/tmp/checks ROOFLINE=${ROOFLINE:-0} setsid nohup bash scripts/gpu_checks.sh >/tmp/checks.log 2>&1 &
        echo "CUDA checks started in the background"
    fi
    ;;
train)
    mkdir -p /tmp/payload
    cat /tmp/pieces/piece* | tar -xf - -C /tmp/payload || exit 1
    ls -l /tmp/payload
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    # one after the other: side by side, two 16-thread processes (and the checks) ran each at a tenth of its speed.
    # Each target whose GGUF travelled is trained; with both, Gemma gets two thirds of what is left of the lease.
    end=${FINISH_BY:?the end of the lease, a unix time}
    now=$(date +%s)
    gemma_end=$end
    [ -f /tmp/payload/smollm2-135m.gguf ] && gemma_end=$(( now + (end - now) * 2 / 3 ))
    [ -f /tmp/payload/gemma-3-270m.gguf ] && FINISH_BY=$gemma_end SCREENED_HEAD=1 BATCH=64 LR=2e-3 \
        bash scripts/gpu_train_feature.sh gemma-3-270m /tmp/payload/gemma-3-270m.gguf \
        /tmp/payload/gemma-3-270m-chunks.pt checkpoints/gemma-3-270m-feature-l1
    [ -f /tmp/payload/smollm2-135m.gguf ] && FINISH_BY=$end BATCH=64 LR=3e-3 bash scripts/gpu_train_feature.sh \
        smollm2-135m /tmp/payload/smollm2-135m.gguf /tmp/payload/smollm2-135m-chunks.pt \
        checkpoints/smollm2-135m-feature-l1
    for f in /tmp/checks/pytest.txt /tmp/checks/device.txt; do [ -f "$f" ] && cp "$f" "$OUT/"; done
    tail -3 /tmp/checks/pytest.txt 2>/dev/null
    ;;
*)
    echo "usage: bash scripts/gpu_session.sh receive [checks] | train" >&2
    exit 2
    ;;
esac
