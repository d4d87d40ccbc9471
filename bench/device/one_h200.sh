#!/usr/bin/env bash
# One device call on nvidia-h200-x2 that measures the one-H200 setups side by side, one GPU each:
#   GPU0: the prototype baseline (.gpu/prototype_baseline_gpu.py, a copy of shared/tools/), then the bf16 engine bench
#   GPU1: the FP8 engine bench (it reads GPU0's baseline when it ends)
# Run from the repository root on the device with .whl (bench/gpu_wheels.sh) and .gpu carried:
#   bash bench/device/one_h200.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export BENCH_COMMAND="bash bench/device/one_h200.sh"
OUT=${OUT:-bench/results}
mkdir -p "$OUT/b1"
(CUDA_VISIBLE_DEVICES=1 timeout 560 python3 bench/gpu_70b.py --fp8 --baseline "$OUT/b1/baseline.json" --out "$OUT" >"$OUT/fp8.log" 2>&1) &
F=$!
(
  export CUDA_VISIBLE_DEVICES=0
  RESULTS_DIR="$OUT/b1" timeout 240 python3 .gpu/prototype_baseline_gpu.py >"$OUT/baseline.log" 2>&1
  timeout 330 python3 bench/gpu_70b.py --baseline "$OUT/b1/baseline.json" --out "$OUT" >"$OUT/bf16.log" 2>&1
)
wait $F
echo "=== baseline"; tail -5 "$OUT/baseline.log"
echo "=== bf16"; grep -v "^gemm_plan\|^baseline.raw" "$OUT/bf16.log" | tail -40
echo "=== fp8"; grep -v "^gemm_plan\|^baseline.raw" "$OUT/fp8.log" | tail -40
