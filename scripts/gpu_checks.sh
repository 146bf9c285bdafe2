#!/usr/bin/env bash
# The checks for a lent CUDA machine, in one call: the CUDA-only tests (the Triton head compiled, not interpreted,
# inside real generate calls) and the sparse head timed against the card's memory-bandwidth roofline.
# Packages the machine's image lacks or has in another version travel as wheels in .whl/ (see README, "On a GPU").
#   bash scripts/gpu_checks.sh            # writes under $OUT (default /tmp/evospec-gpu); ROOFLINE=0: tests only
set -uo pipefail
OUT=${OUT:-/tmp/evospec-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
if [ ! -d /tmp/site/transformers ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
export PYTHONUNBUFFERED=1
python3 -c "import sys, torch, triton, transformers, peft, faiss; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'faiss', faiss.__version__)" | tee -a "$OUT/device.txt"
timeout 330 python3 -m pytest -q -p no:cacheprovider -rs tests/ops \
    tests/generation/test_greedy_equivalence.py::test_greedy_on_cuda_with_the_triton_head \
    tests/generation/test_feature_drafter.py::test_greedy_on_cuda_with_the_triton_head 2>&1 | tee "$OUT/pytest.txt"
tests=${PIPESTATUS[0]}
roofline=skipped
if [ "${ROOFLINE:-1}" != 0 ]; then  # ROOFLINE=0: the kernel is unchanged since the last figures
    timeout 150 python3 benchmarks/gpu_roofline_lm_head.py --out "$OUT/roofline.json" 2>&1 | tee "$OUT/roofline.txt"
    roofline=${PIPESTATUS[0]}
fi
echo "pytest exit $tests, roofline exit $roofline"
