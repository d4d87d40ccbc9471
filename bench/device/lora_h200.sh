#!/usr/bin/env bash
# LoRA adapters in the fast decoder on ONE GPU (H200 or H100): the GPU tests, the prototype baseline, then the
# LoRA mode of the engine bench (bench/gpu_70b.py --lora: rank-16 adapters on every adapted module, the base measured
# in the same run) in bf16 and in FP8. Each stage is bounded with `timeout`; name the stages to run (default: all).
# A device call runs at most 10 minutes, so run it in three calls on the same warm machine (the baseline's JSON is
# kept in /tmp between calls):
#   bash bench/device/lora_h200.sh tests baseline     # ~5 min
#   bash bench/device/lora_h200.sh bf16               # ~6 min
#   bash bench/device/lora_h200.sh fp8                # ~6 min
# From the repository root on the device, with .whl (bench/gpu_wheels.sh) and .gpu (prototype_baseline_gpu.py)
# carried. Results: $OUT/gpu-h200x1-{bf16,fp8}-lora.json, logs beside them. CPU smoke run of the bench stages:
#   LORA_SKIP_WHEELS=1 LORA_BENCH_EXTRA="--shape tiny --device cpu --new 8 --concurrency 6" OUT=/tmp/lora-smoke bash bench/device/lora_h200.sh bf16
set -u
[ -n "${LORA_SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
export BENCH_COMMAND="bash bench/device/lora_h200.sh $*"
OUT=${OUT:-bench/results}
KEEP=/tmp/hanbot-lora-baseline
mkdir -p "$OUT" "$KEEP"
STAGES=${*:-tests baseline bf16 fp8}
baseline_arg() { [ -f "$KEEP/baseline.json" ] && echo "--baseline $KEEP/baseline.json"; }
show() { grep -v "^gemm_plan\|^baseline.raw" "$1" | grep -E "^lora\.|error|Error|peak_gpu|kv_cache|warm_start|gpu_free" | tail -40; }
for stage in $STAGES; do
  case $stage in
  tests)
    timeout 280 python3 -m pytest -c /dev/null --noconftest -p no:cacheprovider -q -s -rs \
      tests/inference/test_fast_lora.py tests/inference/test_fast_decoder.py \
      -k "gpu or kernels_equal or kernels_fused or decoder_on_the_kernels" >"$OUT/lora-gpu-tests.log" 2>&1
    echo "=== gpu tests (rc $?)"; grep -E "passed|failed|FAILED|Error|GPU_.*LOGITS" "$OUT/lora-gpu-tests.log" | tail -15
    ;;
  baseline)
    RESULTS_DIR="$KEEP" timeout 240 python3 .gpu/prototype_baseline_gpu.py >"$OUT/baseline.log" 2>&1
    echo "=== baseline (rc $?)"; tail -3 "$OUT/baseline.log"; cp "$KEEP"/*.json "$OUT/" 2>/dev/null
    ;;
  bf16)
    # shellcheck disable=SC2046
    timeout 420 python3 bench/gpu_70b.py --lora $(baseline_arg) ${LORA_BENCH_EXTRA:-} --out "$OUT" >"$OUT/lora-bf16.log" 2>&1
    echo "=== bf16 LoRA (rc $?)"; show "$OUT/lora-bf16.log"
    ;;
  fp8)
    # shellcheck disable=SC2046
    timeout 420 python3 bench/gpu_70b.py --lora --fp8 $(baseline_arg) ${LORA_BENCH_EXTRA:-} --out "$OUT" >"$OUT/lora-fp8.log" 2>&1
    echo "=== fp8 LoRA (rc $?)"; show "$OUT/lora-fp8.log"
    ;;
  *) echo "unknown stage $stage (tests, baseline, bf16, fp8)"; exit 2 ;;
  esac
done
