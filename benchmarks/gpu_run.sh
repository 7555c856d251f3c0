#!/usr/bin/env bash
# One prepared GPU check (see README): install carried wheels (astropy for the workflows),
# then the epoch benchmark (PyTorch and, where triton imports, the fused Triton kernels,
# eager and as CUDA graphs, plus their agreement on the device), the clone benchmark
# against the paper's layout, the Voigt cost, and one clone + fit per device and kernel.
set -u
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export BLASE_SPECUTILS_DATA=${BLASE_SPECUTILS_DATA:-$PWD/.gpudata} PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 benchmarks/bench_epoch.py --device cuda --epochs 30 2>&1 | tee "$OUT/epoch.log"
timeout 150 python3 benchmarks/bench_clone.py --device cuda --dtype float32 --epochs 5 \
  --skip-clones --data-dir "$BLASE_SPECUTILS_DATA" 2>&1 | tee "$OUT/clone.log"
timeout 150 python3 benchmarks/bench_voigt.py --device cuda --clones 2>&1 | tee "$OUT/voigt.log"
timeout 150 python3 benchmarks/bench_devices.py 2>&1 | tee "$OUT/devices.log"
