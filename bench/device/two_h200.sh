#!/usr/bin/env bash
# One device call on nvidia-h200-x2: the 70B in bf16 over two H200s, side by side in one call:
#   1. the prototype's way with the layers split 40/40 (accelerate's dispatch, as device_map="auto" does):
#      .gpu/prototype_baseline_gpu.py (a copy of shared/tools/) sees both GPUs
#   2. the bot's engine with tensor parallelism under torchrun (bench/gpu_70b.py --tp 2)
#   3. the same with FP8 weights (--tp 2 --fp8): the setup for many conversations
# Run from the repository root on the device with .whl (bench/gpu_wheels.sh) and .gpu carried:
#   bash bench/device/two_h200.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export BENCH_COMMAND="bash bench/device/two_h200.sh"
OUT=${OUT:-bench/results}
mkdir -p "$OUT/b2"
nvidia-smi topo -m 2>&1 | head -5
# a 2-layer run first: if the one-shot symmetric-memory all-reduce fails or hangs here, the 70B run uses NCCL alone
if ! timeout 120 torchrun --nproc-per-node 2 bench/gpu_70b.py --tp 2 --layers 2 --no-cold --new 16 --concurrency 1,4 \
  --ttft-prompts 512 --out /tmp/probe >"$OUT/probe.log" 2>&1; then
  echo "symm_mem probe failed: NCCL only"; tail -20 "$OUT/probe.log"; export HANBOT_TP_ALLREDUCE=nccl
fi
grep "all_reduce" "$OUT/probe.log"
RESULTS_DIR="$OUT/b2" timeout 280 python3 .gpu/prototype_baseline_gpu.py >"$OUT/baseline2.log" 2>&1
timeout 300 torchrun --nproc-per-node 2 bench/gpu_70b.py --tp 2 --baseline "$OUT/b2/baseline.json" --out "$OUT" >"$OUT/tp.log" 2>&1
timeout 240 torchrun --nproc-per-node 2 bench/gpu_70b.py --tp 2 --fp8 --baseline "$OUT/b2/baseline.json" --out "$OUT" \
  >"$OUT/tp-fp8.log" 2>&1
echo "=== baseline (layer split)"; tail -4 "$OUT/baseline2.log"
echo "=== tensor parallel"; grep -v "^gemm_plan\|^baseline.raw" "$OUT/tp.log" | tail -45
echo "=== tensor parallel, FP8"; grep -v "^gemm_plan\|^baseline.raw" "$OUT/tp-fp8.log" | tail -16
