#!/usr/bin/env bash
# The joints of round 3 on ONE H200 (bf16 70B needs its 141 GB), in two device calls on the same warm machine
# (a call runs at most 10 minutes; the session's device time is 30 minutes, so the workloads are trimmed):
#   bash bench/device/joints_h200.sh a   # GPU tests of prefix reuse and the FP8 KV cache; LoRA bench in bf16;
#                                        # multi-turn bench with bf16 weights and the FP8 KV cache
#   bash bench/device/joints_h200.sh b   # LoRA bench in FP8; multi-turn bench with FP8 weights
# The LoRA bench runs 128 new tokens per reply and 16 conversations (its ratios compare with the base measured in the
# same run); the multi-turn bench runs issue 12's workload (16 channels x 6 turns, 512/64/256 tokens).
# Carry .whl (bench/gpu_wheels.sh; peft added for the LoRA bench). Results and logs go to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
CACHE=/tmp/hanbot-fast-cache
LORA_ARGS="--lora --no-cold --new 128 --concurrency 16 --cache-dir $CACHE --out $OUT"
run() {  # run LIMIT NAME COMMAND...: bounded, logged to $OUT/NAME.log, the command line recorded in the results
  local limit=$1 name=$2
  shift 2
  BENCH_COMMAND="bash bench/device/joints_h200.sh $STAGE   (this step: $*)" timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "=== $name (rc $?)"
  grep -E "^lora\.(single|concurrency\.16\.ratio|mixed\.concurrency\.16\.ratio|switch_s|failed|side|decoder_class)|turn|REL_ERR|passed|failed|Error|warm_start|kv_tokens|targets" "$OUT/$name.log" | grep -v "^gemm_plan" | tail -30
}
STAGE=${1:-a}
case $STAGE in
a)
  run 80 prefix-gpu-tests python3 -m pytest -c /dev/null --noconftest -p no:cacheprovider -q -s -rfs \
    tests/inference/test_prefix_reuse.py tests/inference/test_fp8_kv.py -k "gpu or kernel"
  # shellcheck disable=SC2086
  run 250 lora-bf16 python3 bench/gpu_70b.py $LORA_ARGS
  run 160 multiturn-bf16-fp8kv python3 bench/multiturn.py --fp8-kv --cache-dir $CACHE --out "$OUT"
  ;;
b)
  # shellcheck disable=SC2086
  run 210 lora-fp8 python3 bench/gpu_70b.py --fp8 $LORA_ARGS
  run 180 multiturn-fp8 python3 bench/multiturn.py --fp8 --cache-dir $CACHE --out "$OUT"
  ;;
*) echo "stage a or b"; exit 2 ;;
esac
