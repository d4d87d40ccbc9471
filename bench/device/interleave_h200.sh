#!/usr/bin/env bash
# One device call on nvidia-h200: 16 and 32 conversations arriving together on one H200 (bf16), with the whole
# prompt prefilled at admission (the default) and with engine.interleave_prefill, one after the other; both record
# the longest pause inside a running reply (max_stream_gap_s). Carry .whl (bench/gpu_wheels.sh).
#   bash bench/device/interleave_h200.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
export BENCH_COMMAND="bash bench/device/interleave_h200.sh"
OUT=${OUT:-bench/results}
COMMON="--no-cold --new 256 --concurrency 16,32 --ttft-prompts 512 --cache-dir /tmp/fast-cache --out $OUT"
timeout 115 python3 bench/gpu_70b.py $COMMON --setup h200x1-bf16-engine-admit >"$OUT/admit.log" 2>&1
timeout 115 python3 bench/gpu_70b.py $COMMON --interleave --setup h200x1-bf16-engine-interleave >"$OUT/interleave.log" 2>&1
for f in admit interleave; do echo "=== $f"; grep "concurrency\|ttft_s\|single\|warm" "$OUT/$f.log" | tail -6; done
