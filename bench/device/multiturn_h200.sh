#!/usr/bin/env bash
# One device call on one H200 (about 8 minutes): prefix reuse and the FP8 KV cache on the GPU, and the multi-turn
# benchmark of issue 12 in its two setups.
#   1. GPU tests, 2-layer models of the 70B's widths in bf16: the reused path's logits against recomputing the prefix
#      (GPU_PREFIX_REUSE_REL_ERR), the FP8 KV cache's logits against the bf16 cache (GPU_FP8_KV_REL_ERR), the FP8 KV
#      kernels against the torch versions, and the fast decoder's logits test (GPU_LOGITS_REL_ERR)
#   2. bench/multiturn.py, FP8 weights: 16 channels x 6 turns with prefix reuse, then new conversations with reuse
#      off on the same engine (multiturn-h200x1-fp8.json)
#   3. the same workload with bf16 weights and the FP8 KV cache, reuse on (multiturn-h200x1-bf16-fp8kv.json)
# Each step is bounded by `timeout`; results are written turn by turn, so a step cut short keeps what it measured.
# Run from the repository root with .whl carried (bench/gpu_wheels.sh):
#   bash bench/device/multiturn_h200.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
export BENCH_COMMAND="bash bench/device/multiturn_h200.sh"
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
timeout 150 python3 -m pytest -c /dev/null --noconftest -p no:cacheprovider -q -s -rs \
  tests/inference/test_prefix_reuse.py tests/inference/test_fp8_kv.py tests/inference/test_fast_decoder.py \
  -k "gpu or kernel" >"$OUT/gpu-tests.log" 2>&1
timeout 240 python3 bench/multiturn.py --fp8 --compare-no-reuse --cache-dir /tmp/fast-cache --out "$OUT" \
  >"$OUT/multiturn-fp8.log" 2>&1
timeout 170 python3 bench/multiturn.py --fp8-kv --cache-dir /tmp/fast-cache --out "$OUT" \
  >"$OUT/multiturn-bf16-fp8kv.log" 2>&1
echo "=== gpu tests"; grep -E "passed|failed|FAILED|Error|REL_ERR" "$OUT/gpu-tests.log" | tail -12
for f in fp8 bf16-fp8kv; do
  echo "=== multiturn $f"; grep -E "turn|start|kv_tokens|evicted|peak|targets|Error" "$OUT/multiturn-$f.log" | tail -20
done
