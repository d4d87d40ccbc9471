#!/usr/bin/env bash
# Round 4 on ONE H200 (kind nvidia-h200), in two device calls (run with timeout_s 600: the steps' own timeouts add up
# to 540 s a call, plus ~15 s of wheel installation); results and logs in $OUT.
#   bash bench/device/round4_h200.sh a   # FP8 (~6 min): the engine bench (1/4/16/32 conversations, issue 12's 32),
#                                        # training while serving (issue 11 item 6), 16/32 with interleaved prefill
#   bash bench/device/round4_h200.sh b   # LoRA (~6.5 min): 8 tenants' adapters over 16 conversations in bf16 (issue
#                                        # 19), the prototype baseline, the same LoRA bench in FP8
# Or name the steps: fp8 tws fp8-interleave lora-bf16 baseline lora-fp8, gpu-tests multiturn-fp8 multiturn-bf16 (in that order within a call: each later
# one finds the kernels the earlier ones compiled in $CACHE), tws-mps (training while serving under NVIDIA MPS, in a
# call of its own with tws, ~9 min: `bash bench/device/round4_h200.sh tws tws-mps`; the tws step with an MPS control
# daemon started and quit by the bench, the trainer at below-normal client priority; TWS_MPS_SM=N also caps the
# trainer at N% of the SMs; docs/learning.md, "Sharing one GPU: MPS"). Each step is bounded by `timeout` and writes its
# figures as they come, so one cut short keeps what it measured. FP8 weights are drawn and quantised layer by layer
# (bench/gpu_70b.py --fp8), so the FP8 steps also fit an H100; bf16 steps and the baseline need the H200's memory.
# GPU_TAG=h100x1 labels the results of a run on an H100 (FP8 steps fit there).
# Carry .whl (`bash bench/gpu_wheels.sh --train`: pydantic & co., peft, bitsandbytes for the trainer) and .gpu
# (prototype_baseline_gpu.py, for the baseline step).
# Files back: a: gpu-h200x1-fp8-engine-round4.json, train-while-serving.json, gpu-h200x1-fp8-engine-interleave.json
# and 4 logs; b: gpu-h200x1-{bf16,fp8}-lora-tenants8.json, prototype-baseline-h200x1-round4.json and 3 logs;
# tws-mps: train-while-serving-mps.json, its trainer's log, the MPS daemon's (-control.log, -server.log) and
# train-while-serving-mps.log (rc 3 and errors.mps in the JSON when the machine has no nvidia-cuda-mps-control or its
# daemon does not start).
# Round 5 (the fold of the adapters' shrink, pipelined decode steps; each measured against the path it replaces):
#   bash bench/device/round4_h200.sh arch17 lora-bf16-r5   # one H200, ~8 min: issue 17's same-command check with
#                                        # round 4's paths, then gpu-h200x1-bf16-lora.json with round 5's defaults
#   bash bench/device/round4_h200.sh profile-fold lora-fp8-r5   # ~7 min (H100: GPU_TAG=h100x1): the graph-step A/B
#                                        # (lora-profile-<gpu>-fold.json), then gpu-<tag>-fp8-lora.json
#   bash bench/device/round4_h200.sh multiturn-fp8-ab   # ~7 min: issue 12's workload, plain then pipelined steps
#                                        # (multiturn-<tag>-fp8-pipe0.json / -pipe1.json)
# CPU smoke run of the steps' code: tests/inference/test_gpu_bench_smoke.py, test_train_while_serving_smoke.py; of
# this script's plumbing (tiny shape on the CPU, no wheels, no baseline):
#   ROUND4_SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/round4-smoke bash bench/device/round4_h200.sh a b
set -u
PY=${PYTHON:-python3}
TINY="" ENGINE_SMALL="" TWS_SMALL="" LORA_SMALL="" MULTI_SMALL=""
if [ -n "${ROUND4_SMOKE:-}" ]; then
  TINY="--shape tiny --device cpu --new 4"
  ENGINE_SMALL="--concurrency 1,2 --ttft-prompts 16" TWS_SMALL="--concurrency 2 --seq-len 48 --beside-steps 1"
  LORA_SMALL="--concurrency 8"
  MULTI_SMALL="--shape tiny --device cpu --channels 2 --turns 2 --first 24 --follow 8 --reply 4"
  export PYTHONPATH=.
else
  if ! ls .whl/bitsandbytes-*.whl >/dev/null 2>&1; then
    echo "note: no bitsandbytes wheel in .whl (bash bench/gpu_wheels.sh --train): the tws step's trainer will fail"
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
CACHE=${ROUND4_CACHE:-/tmp/hanbot-fast-cache}
mkdir -p "$OUT" "$CACHE"
CALL="$*"
run() { # run LIMIT NAME COMMAND...: bounded, logged to $OUT/NAME.log, the command line recorded in the results
  local limit=$1 name=$2 t=$SECONDS
  shift 2
  BENCH_COMMAND="bash bench/device/round4_h200.sh $CALL   (this step: $*)" timeout -k 15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "=== $name (rc $?, $((SECONDS - t)) s)"
}
show() { # the figures worth reading in the reply, from a step's log
  grep -v "^gemm_plan\|^baseline.raw\|^setup\.\|^command" "$OUT/$1.log" |
    grep -E "$2|Error|error|Traceback|warm_start|kv_cache_tokens|materialise_s|gpu_free" | tail -"${3:-30}"
}
STEPS=()
for arg in "${@:-a}"; do
  case $arg in
  a) STEPS+=(fp8 tws fp8-interleave) ;;
  b) STEPS+=(lora-bf16 baseline lora-fp8) ;;
  *) STEPS+=("$arg") ;;
  esac
done
for step in "${STEPS[@]}"; do
  case $step in
  fp8) # the engine bench with FP8 weights, every phase (issue 12: 32 conversations, aggregate and p95 TTFT)
    # shellcheck disable=SC2086
    run 180 fp8-engine "$PY" bench/gpu_70b.py --fp8 --no-cold --cache-dir $CACHE \
      --setup ${GPU_TAG:-h200x1}-fp8-engine-round4 --out "$OUT" $TINY $ENGINE_SMALL
    show fp8-engine "^single_stream|^concurrency|^ttft|^decode_step|^peak|\| " 40
    ;;
  tws) # training while serving: the FP8 engine idle, then beside a QLoRA step of the 70B in its own process
    # two processes on one GPU: an exclusive compute mode would refuse the trainer's context (the log would say)
    [ -n "${ROUND4_SMOKE:-}" ] || nvidia-smi --query-gpu=name,compute_mode,memory.used --format=csv,noheader
    # shellcheck disable=SC2086
    run 260 train-while-serving "$PY" bench/train_while_serving.py --cache-dir $CACHE --out "$OUT" $TINY $TWS_SMALL
    show train-while-serving "^idle|^beside|^ratio|^train\.|^failed|^refused|^memory|^targets|step.*_s:|peak" 40
    ;;
  tws-mps) # the same under MPS: both processes clients of a daemon started for the step (bench/train_while_serving.py
    # --mps starts and quits it), so their kernels run side by side instead of time-slicing the GPU
    [ -n "${ROUND4_SMOKE:-}" ] || nvidia-smi --query-gpu=name,compute_mode,driver_version,memory.used --format=csv,noheader
    command -v nvidia-cuda-mps-control >/dev/null || echo "note: no nvidia-cuda-mps-control on PATH: the step will say so"
    TWS_MPS_OPTS="--mps-trainer-priority below_normal${TWS_MPS_SM:+ --mps-trainer-sm-percent $TWS_MPS_SM}"
    # shellcheck disable=SC2086
    run 280 train-while-serving-mps "$PY" bench/train_while_serving.py --mps $TWS_MPS_OPTS --cache-dir $CACHE \
      --out "$OUT" $TINY $TWS_SMALL
    show train-while-serving-mps "^idle|^beside|^ratio|^train\.|^failed|^refused|^memory|^targets|^mps|^errors|MPS|step.*_s:|peak" 40
    ;;
  fp8-interleave) # the same at 16 and 32 conversations with the bot's default, engine.interleave_prefill
    # shellcheck disable=SC2086
    run 100 fp8-interleave "$PY" bench/gpu_70b.py --fp8 --interleave --no-cold --concurrency 16,32 \
      --ttft-prompts 512 --cache-dir $CACHE --setup ${GPU_TAG:-h200x1}-fp8-engine-interleave --out "$OUT" $TINY $ENGINE_SMALL
    show fp8-interleave "^single_stream|^concurrency|^ttft|^peak" 12
    ;;
  lora-bf16) # the LoRA bench with 8 slots: base, one adapter, 4 adapters + base, 8 tenants (issue 19), switch
    # shellcheck disable=SC2086
    run 220 lora-bf16 "$PY" bench/gpu_70b.py --lora --lora-tenants 8 --no-cold --new 128 --concurrency 16 \
      --cache-dir $CACHE --setup ${GPU_TAG:-h200x1}-bf16-lora-tenants8 --out "$OUT" $TINY $LORA_SMALL
    show lora-bf16 "^lora\.(single|base|concurrency|mixed|switch|failed|decode_step|slots)|^peak" 30
    ;;
  baseline) # the prototype's way on the same machine (compare ratios within one call)
    [ -n "${ROUND4_SMOKE:-}" ] && continue
    RESULTS_DIR=/tmp timeout 130 python3 .gpu/prototype_baseline_gpu.py >"$OUT/baseline.log" 2>&1
    echo "=== baseline (rc $?)"
    cp /tmp/baseline.json "$OUT/prototype-baseline-h200x1-round4.json" 2>/dev/null
    grep -E "tok_s|ttft|max_mem" "$OUT/baseline.log" | tail -12
    ;;
  lora-fp8)
    # shellcheck disable=SC2086
    run 190 lora-fp8 "$PY" bench/gpu_70b.py --fp8 --lora --lora-tenants 8 --no-cold --new 128 --concurrency 16 \
      --cache-dir $CACHE --setup ${GPU_TAG:-h200x1}-fp8-lora-tenants8 --out "$OUT" $TINY $LORA_SMALL
    show lora-fp8 "^lora\.(single|base|concurrency|mixed|switch|failed|decode_step|slots)|^peak" 30
    ;;
  gpu-tests) # the GPU checks of the kernels of this round (prefill attention, LoRA) and of prefix reuse / FP8 KV
    [ -n "${ROUND4_SMOKE:-}" ] && continue
    run 300 gpu-tests python3 -m pytest -c /dev/null --noconftest -p no:cacheprovider -q -s -rfs \
      tests/inference/test_prefill_attn.py tests/inference/test_fast_lora.py tests/inference/test_prefix_reuse.py \
      tests/inference/test_fp8_kv.py tests/inference/test_fast_decoder.py tests/inference/test_fast_fp8_decoder.py \
      tests/inference/test_pipelined_steps.py -k "gpu or kernel or prefill or fold"
    show gpu-tests "REL_ERR|_TIME|passed|failed" 30
    ;;
  multiturn-fp8) # issue 12's workload (16 channels x 6 turns) with FP8 weights
    # shellcheck disable=SC2086
    run 200 multiturn-fp8 "$PY" bench/multiturn.py --fp8 --cache-dir $CACHE --out "$OUT" $MULTI_SMALL
    show multiturn-fp8 "turn|targets" 20
    ;;
  multiturn-bf16) # the same with bf16 weights and the FP8 KV cache
    # shellcheck disable=SC2086
    run 180 multiturn-bf16-fp8kv "$PY" bench/multiturn.py --fp8-kv --cache-dir $CACHE --out "$OUT" $MULTI_SMALL
    show multiturn-bf16-fp8kv "turn|targets" 20
    ;;
  # ---- round 5: the fold of the adapters' shrink (HANBOT_LORA_FOLD) and pipelined decode steps
  # (HANBOT_PIPELINE_STEPS), each against the path it replaces on the same card; lora-bf16-r5 and arch17 need an H200
  arch17) # issue 17's check: the command of gpu-h200x1-bf16-lora.json with round 4's paths (no fold, plain steps);
    # its base figures (single 29.43 tok/s, 16 conversations 310.87) must stay within 3%
    # shellcheck disable=SC2086
    run 230 arch17 env HANBOT_LORA_FOLD=0 HANBOT_PIPELINE_STEPS=0 "$PY" bench/gpu_70b.py --lora --no-cold --new 128 \
      --concurrency 16 --cache-dir $CACHE --setup ${GPU_TAG:-h200x1}-bf16-lora-arch17 --out "$OUT" $TINY $LORA_SMALL
    show arch17 "^lora\.(single|base|concurrency|mixed|switch|failed|decode_step)|^peak" 30
    ;;
  lora-bf16-r5|lora-fp8-r5) # issue 11's LoRA file with round 5's defaults (fold on, pipelined steps)
    FP8_OPT="" KIND=bf16
    [ "$step" = lora-fp8-r5 ] && FP8_OPT="--fp8" KIND=fp8
    # shellcheck disable=SC2086
    run 230 "$step" "$PY" bench/gpu_70b.py $FP8_OPT --lora --no-cold --new 128 --concurrency 16 --cache-dir $CACHE \
      --setup ${GPU_TAG:-h200x1}-$KIND-lora --out "$OUT" $TINY $LORA_SMALL
    show "$step" "^lora\.(single|base|concurrency|mixed|switch|failed|decode_step)|^peak" 30
    ;;
  profile-fold) # the graph step of 2 layers at the 70B widths: separate shrink, side stream, fold (bf16 and FP8)
    [ -n "${ROUND4_SMOKE:-}" ] && continue
    run 200 profile-fold env PYTHONPATH="$PYTHONPATH:." python3 bench/lora_profile.py --out "$OUT" --skip-trace --name fold
    show profile-fold "LORA_STEP|LORA_PROFILE|Error" 48
    ;;
  multiturn-fp8-ab) # issue 12's workload with FP8 weights, plain steps then pipelined steps
    for mode in 0 1; do
      # shellcheck disable=SC2086
      run 200 multiturn-fp8-pipe$mode env HANBOT_PIPELINE_STEPS=$mode "$PY" bench/multiturn.py --fp8 --cache-dir $CACHE \
        --setup ${GPU_TAG:-h200x1}-fp8-pipe$mode --out "$OUT" $MULTI_SMALL
      show multiturn-fp8-pipe$mode "turn|targets" 12
    done
    ;;
  *) echo "unknown step $step (a, b, fp8, tws, tws-mps, fp8-interleave, lora-bf16, baseline, lora-fp8, gpu-tests,
    multiturn-fp8, multiturn-bf16, arch17, lora-bf16-r5, lora-fp8-r5, profile-fold, multiturn-fp8-ab)"; exit 2 ;;
  esac
done
