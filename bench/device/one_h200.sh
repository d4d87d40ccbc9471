#!/usr/bin/env bash
# One device call on nvidia-h200-x2 that measures the one-H200 setups side by side, one GPU each:
#   GPU0: the prototype baseline (.gpu/prototype_baseline_gpu.py, a copy of shared/tools/), then the bf16 engine bench
#   GPU1: the GPU-only tests of the fast decoder and the FP8 kernels, the FP8 kernel micro-benchmark
#         (fp8-kernels.json), then the FP8 engine bench (it reads GPU0's baseline when it ends)
# Run from the repository root on the device with .whl (bench/gpu_wheels.sh) and .gpu carried:
#   bash bench/device/one_h200.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export BENCH_COMMAND="bash bench/device/one_h200.sh"
OUT=${OUT:-bench/results}
mkdir -p "$OUT/b1"
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 120 python3 -m pytest -c /dev/null --noconftest -p no:cacheprovider -q -s -rs \
    tests/inference/test_fast_decoder.py tests/inference/test_fast_fp8.py tests/inference/test_fast_quant.py \
    -k "gpu or cuda or 70b or bit_for_bit" >"$OUT/gpu-tests.log" 2>&1
  timeout 150 python3 bench/fp8_kernels.py --out "$OUT" >"$OUT/fp8-kernels.log" 2>&1
  timeout 330 python3 bench/gpu_70b.py --fp8 --baseline "$OUT/b1/baseline.json" --out "$OUT" >"$OUT/fp8.log" 2>&1
) &
F=$!
(
  export CUDA_VISIBLE_DEVICES=0
  RESULTS_DIR="$OUT/b1" timeout 240 python3 .gpu/prototype_baseline_gpu.py >"$OUT/baseline.log" 2>&1
  timeout 330 python3 bench/gpu_70b.py --baseline "$OUT/b1/baseline.json" --out "$OUT" >"$OUT/bf16.log" 2>&1
)
wait $F
echo "=== gpu tests"; grep -E "passed|failed|FAILED|Error|GPU_LOGITS" "$OUT/gpu-tests.log" | tail -12
echo "=== fp8 kernels"; tail -25 "$OUT/fp8-kernels.log"
echo "=== baseline"; tail -3 "$OUT/baseline.log"
echo "=== bf16"; grep -v "^gemm_plan\|^baseline.raw" "$OUT/bf16.log" | tail -22
echo "=== fp8"; grep -v "^gemm_plan\|^baseline.raw" "$OUT/fp8.log" | tail -22
