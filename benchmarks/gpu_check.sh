#!/usr/bin/env bash
# The GPU checks, in at most 8 minutes on one GPU machine: bash benchmarks/gpu_check.sh
#   1. the tests marked gpu (every algorithm on cuda against its CPU run; bf16-mixed and 16-mixed);
#   2. a short HAT run on CUDA against CPU: the same accuracy matrix within float tolerance;
#   3. HAT on Permuted MNIST-20 at the paper's size (synthetic: embedded images tiled to 60,000) on CUDA, timed
#      against the raw PyTorch loop on the same device;
#   4. fractional-GPU packing: 8 trials at gpu 0.125 against the same 8 at gpu 1, as a throughput ratio.
# Without a CUDA device it says so and runs the CPU timing of step 3 instead (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || make venv
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "== $(nvidia-smi -L 2>/dev/null | head -n 1)"
    echo "== 1. tests marked gpu";           timeout 200 "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider
    echo "== 2. CUDA against CPU";           timeout 60 "$PY" benchmarks/cuda_vs_cpu.py
    echo "== 3. PMNIST-20 at paper size";    (cd benchmarks && timeout 120 "../$PY" paper_size.py --device cuda)
    echo "== 4. packed sweep";               timeout 100 "$PY" benchmarks/gpu_packing.py
else
    echo "== no CUDA device on this machine: the GPU parts (1, 2, 4 and the CUDA run of 3) did not run"
    echo "== 3 (CPU). PMNIST-20 at paper size on this machine's CPU against the raw-loop floor"
    (cd benchmarks && "../$PY" paper_size.py --device cpu --raw-tasks 1)
fi
