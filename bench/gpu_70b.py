"""GPU benchmark of the bot's fast decoder on the real Llama-3-70B shape (random bf16 weights built on the GPU).

Decode speed depends on shapes, not on weight values, and the GPU machine cannot download weights, so the model is
built on the meta device and materialised with random tensors straight on the GPU (norms at one), the method of
``shared/tools/prototype_baseline_gpu.py``. Generation is forced to a fixed length (no stop token).

It drives ``inference.fast.StaticSlotDecoder`` through the BatchDecoder interface with a scheduler loop like the
LocalEngine's (admit while memory allows, one step for every running request, stop at max_new_tokens), and
measures: copy bandwidth and the bandwidth floor, single-stream decode tok/s, TTFT at 512/2048/4096 prompt tokens,
aggregate tok/s and p50/p95 TTFT at 1/4/16/32 conversations arriving together (512-token prompts, 256 new tokens,
temperature 0.6, top_p 0.9, repetition_penalty 1.1), graph-replay time of one decode step per batch size, peak GPU
memory, and start-up (weights in memory → first token) cold (empty kernel cache, in a child process) and warm.
Run the prototype baseline first in the same call and pass its JSON with --baseline.

  RESULTS_DIR=$OUT python3 .gpu/prototype_baseline_gpu.py
  python3 bench/gpu_70b.py --baseline $OUT/baseline.json --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.domain import GenerationParams
from inference.decoder import SlotRequest
from inference.fast import StaticSlotDecoder

GIB = 1 << 30
SAMPLING = dict(temperature=0.6, top_p=0.9, repetition_penalty=1.1, do_sample=True)
RESULTS: dict = {}
OUT_FILE: Path | None = None


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def log(key: str, value) -> None:
    cur = RESULTS
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    print(f"{key} = {value}", flush=True)
    if OUT_FILE is not None:
        OUT_FILE.write_text(json.dumps(RESULTS, indent=1))


def copy_bandwidth() -> float:
    x = torch.empty(2 * GIB // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 10 * 2 * x.numel() * 2 / (time.perf_counter() - t)
    del x, y
    torch.cuda.empty_cache()
    return bw


def build_70b(layers: int = 80):
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=layers,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128009,
        tie_word_embeddings=False,
    )
    with init_empty_weights():
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    for name, p in list(model.named_parameters()):
        if name.endswith("norm.weight") or "layernorm" in name:
            val = torch.ones(p.shape, dtype=torch.bfloat16, device="cuda")
        else:
            val = torch.empty(p.shape, dtype=torch.bfloat16, device="cuda").normal_(0, 0.02)
        set_module_tensor_to_device(model, name, "cuda", value=val)
    model.model.rotary_emb.to("cuda")
    model.eval()
    nparams = sum(p.numel() for p in model.parameters())
    return model, nparams


def prompt(n: int, seed: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(1000, 120000, (n,), generator=g).tolist())


def start_decoder(model, args, cache_dir: str) -> tuple[StaticSlotDecoder, float]:
    """Construct the decoder and serve one first token; seconds from weights-in-memory to that token."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    dec = StaticSlotDecoder(
        model,
        capacity=args.capacity,
        prefill_chunk=args.prefill_chunk,
        cache_dir=cache_dir,
        cuda_graphs=False if getattr(args, "fallback", False) else None,
    )
    params = GenerationParams(max_new_tokens=8, **SAMPLING)
    dec.admit(SlotRequest(0, prompt(512, 0), params))
    elapsed = time.perf_counter() - t
    dec.release(0)
    return dec, elapsed


def run_conversations(dec: StaticSlotDecoder, n: int, prompt_len: int, new: int, admission: str) -> dict:
    """n requests arrive at t=0; admit while slots and KV allow; run until each has ``new`` tokens."""
    params = GenerationParams(max_new_tokens=new, **SAMPLING)
    waiting = [(i, prompt(prompt_len, 100 + i)) for i in range(n)]
    free = list(range(dec.capacity))
    slot_req: dict[int, int] = {}
    count = [0] * n
    first: list[float] = [0.0] * n
    done_at: list[float] = [0.0] * n
    max_running = 0
    sync()
    t0 = time.perf_counter()

    def got(slot: int, now: float) -> None:
        i = slot_req[slot]
        if count[i] == 0:
            first[i] = now - t0
        count[i] += 1
        if count[i] >= new:
            done_at[i] = now - t0
            dec.release(slot)
            del slot_req[slot]
            free.append(slot)

    while waiting or slot_req:
        batch = []
        while waiting and free and dec.can_admit(prompt_len, new):
            i, p = waiting.pop(0)
            slot = free.pop(0)
            slot_req[slot] = i
            req = SlotRequest(slot, p, params)
            if admission == "submit":
                dec.submit(req)
            elif admission == "admit_many":
                dec.submit(req)  # reserves its KV now, so the next can_admit sees it
                batch.append(slot)
            else:
                tok = dec.admit(req)
                del tok
                got(slot, time.perf_counter())
        if batch:
            firsts = dec.complete(batch)
            now = time.perf_counter()
            for slot in firsts:
                got(slot, now)
        max_running = max(max_running, len(slot_req))
        out = dec.step()
        now = time.perf_counter()
        for slot in out:
            if slot in slot_req:
                got(slot, now)
    wall = time.perf_counter() - t0
    ttfts = sorted(first)
    return {
        "aggregate_tok_s": round(n * new / wall, 2),
        "p50_ttft_s": round(statistics.median(ttfts), 3),
        "p95_ttft_s": round(ttfts[min(n - 1, round(0.95 * (n - 1)))], 3),
        "max_ttft_s": round(ttfts[-1], 3),
        "wall_s": round(wall, 2),
        "max_running": max_running,
        "admission": admission,
    }


def single_stream(dec: StaticSlotDecoder, new: int) -> tuple[float, float]:
    """Decode tok/s of one conversation (512-token prompt), excluding its prefill; and its TTFT."""
    params = GenerationParams(max_new_tokens=new, **SAMPLING)
    sync()
    t0 = time.perf_counter()
    dec.admit(SlotRequest(0, prompt(512, 7), params))
    t1 = time.perf_counter()
    for _ in range(new - 1):
        dec.step()
    t2 = time.perf_counter()
    dec.release(0)
    return (new - 1) / (t2 - t1), t1 - t0


def ttft(dec: StaticSlotDecoder, n: int) -> float:
    params = GenerationParams(max_new_tokens=16, **SAMPLING)
    times = []
    for rep in range(3):
        sync()
        t = time.perf_counter()
        dec.admit(SlotRequest(0, prompt(n, 50 + rep), params))
        times.append(time.perf_counter() - t)
        dec.release(0)
    return statistics.median(times)


def step_times(dec: StaticSlotDecoder) -> dict[str, float]:
    """Graph replay time of one decode step per bucket, all rows at 768 tokens of context (events, median)."""
    out = {}
    params = GenerationParams(max_new_tokens=300, **SAMPLING)
    for b in dec.buckets:
        if dec.pool.free_blocks < b * dec.pool.blocks_for(812):
            break
        slots = list(range(b))
        dec.admit_many([SlotRequest(s, prompt(512, 300 + s), params) for s in slots])
        for _ in range(3):
            dec.step()
        graph = dec._graphs.get(b)
        print(f"step_times: bucket {b}, graphs {sorted(dec._graphs)}", flush=True)
        times = []
        if graph is not None:
            for _ in range(20):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                graph.replay()
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e))
            out[str(b)] = round(statistics.median(times), 3)
        for s in slots:
            dec.release(s)
    return out


def guarded(name: str, fn, dec: StaticSlotDecoder | None = None) -> None:
    """Run one phase; a failure is recorded, its requests released, and the next phase still runs."""
    try:
        fn()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        log(f"errors.{name}", repr(exc)[:800])
        if dec is not None:
            for slot in range(dec.capacity):
                dec.release(slot)
        torch.cuda.empty_cache()


def single_phase(dec: StaticSlotDecoder, args) -> None:
    best = 0.0
    for _ in range(2):
        tok_s, _t512 = single_stream(dec, args.new)
        best = max(best, tok_s)
    log("single_stream_tok_s", round(best, 2))
    log("single_stream_fraction_of_floor", round(best / RESULTS["bandwidth_floor_tok_s"], 3))


def child_cold(args) -> None:
    model, _ = build_70b()
    _, elapsed = start_decoder(model, args, args.cache_dir)
    print(json.dumps({"cold_start_s": elapsed}), flush=True)


def main() -> None:
    global OUT_FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", default="h200x1-bf16")
    ap.add_argument("--out", default=os.environ.get("RESULTS_DIR", "bench/results"))
    ap.add_argument("--baseline", default=None, help="the prototype baseline's JSON (same call)")
    ap.add_argument("--capacity", type=int, default=32)
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--admission", default="submit,admit_many")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--child-cold", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    if args.child_cold:
        child_cold(args)
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    OUT_FILE = out_dir / f"gpu-{args.setup}.json"
    import transformers

    log("setup.gpus", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    log("setup.precision", "bf16 weights and KV cache")
    log(
        "setup.mechanism",
        "inference.fast.StaticSlotDecoder: paged static KV slots, Triton decode kernels, "
        "one CUDA graph per batch bucket, on-GPU sampler; driven through the BatchDecoder interface",
    )
    log("setup.versions", {"torch": torch.__version__, "transformers": transformers.__version__})
    log(
        "command",
        "RESULTS_DIR=$OUT python3 .gpu/prototype_baseline_gpu.py && python3 bench/gpu_70b.py "
        + " ".join(sys.argv[1:]),
    )
    bw = copy_bandwidth()
    log("copy_bandwidth_TBps", round(bw / 1e12, 3))
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="hanbot-fast-cache-")
    if not args.no_cold:
        env = dict(os.environ, TRITON_CACHE_DIR="", TORCHINDUCTOR_CACHE_DIR="")
        env.pop("TRITON_CACHE_DIR")
        env.pop("TORCHINDUCTOR_CACHE_DIR")
        r = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child-cold",
                "--cache-dir",
                cache_dir,
                "--capacity",
                str(args.capacity),
                "--prefill-chunk",
                str(args.prefill_chunk),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=400,
        )
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode == 0 and lines:
            log("cold_start_s", round(json.loads(lines[-1])["cold_start_s"], 2))
        else:
            log("cold_start_error", (r.stderr or r.stdout)[-2000:])
    t = time.perf_counter()
    model, nparams = build_70b()
    log("materialise_s", round(time.perf_counter() - t, 2))
    log("weight_GB", round(nparams * 2 / 1e9, 2))
    log("bandwidth_floor_tok_s", round(bw / (nparams * 2), 2))
    log("gpu_free_after_weights_GiB", round(torch.cuda.mem_get_info()[0] / GIB, 2))
    torch.cuda.reset_peak_memory_stats()
    try:
        dec, warm = start_decoder(model, args, cache_dir)
    except Exception as exc:  # keep going without graphs / Triton so the call still measures something
        log("decoder_error", repr(exc)[:1500])
        import traceback

        traceback.print_exc()
        torch.cuda.empty_cache()
        args.fallback = True
        os.environ["HANBOT_FAST_NO_TRITON"] = os.environ.get("BENCH_FALLBACK_NO_TRITON", "0")
        dec, warm = start_decoder(model, args, cache_dir)
    log("warm_start_s", round(warm, 2))
    log("kv_cache_tokens", dec.kv_tokens)
    log("kv_cache_GiB", round(dec.kv_tokens * dec._weights.spec.kv_bytes_per_token / GIB, 2))
    log(
        "gemm_plan",
        {
            "choices": {str(k): v for k, v in dec.model.plan.choices.items()},
            "timings": dec.model.plan.timings,
        },
    )
    guarded("single_stream", lambda: single_phase(dec, args), dec)
    for n in (512, 2048, 4096):
        guarded(f"ttft_s.{n}", lambda n=n: log(f"ttft_s.{n}", round(ttft(dec, n), 3)), dec)
    modes = args.admission.split(",")
    for n in [int(c) for c in args.concurrency.split(",")]:
        for mode in modes:
            key = f"concurrency.{n}" if mode == modes[0] else f"concurrency_{mode}.{n}"
            guarded(
                key, lambda n=n, mode=mode, key=key: log(key, run_conversations(dec, n, 512, args.new, mode))
            )
    guarded("decode_step_ms", lambda: log("decode_step_ms", step_times(dec)), dec)
    log("peak_gpu_mem_gib", round(torch.cuda.max_memory_allocated() / GIB, 2))
    if args.baseline and Path(args.baseline).is_file():
        base = json.loads(Path(args.baseline).read_text())
        b1 = base.get("prototype_decode_tok_s_bs1_sampling")
        log("baseline.single_stream_tok_s", b1)
        log("baseline.ttft_s.512", base.get("ttft_s_prompt512_bs1"))
        for bs in (4, 8, 16):
            log(
                f"baseline.concurrency.{bs}.aggregate_decode_tok_s",
                base.get(f"decode_tok_s_bs{bs}_sampling_aggregate"),
            )
            log(f"baseline.concurrency.{bs}.ttft_s", base.get(f"ttft_s_prompt512_bs{bs}"))
        log("baseline.raw", base)
        if b1:
            log("ratio_single_stream_vs_baseline", round(RESULTS.get("single_stream_tok_s", 0.0) / b1, 2))
    table()


def table() -> None:
    r = RESULTS
    rows = [
        ("copy bandwidth TB/s", r.get("copy_bandwidth_TBps"), ""),
        ("bandwidth floor tok/s", r.get("bandwidth_floor_tok_s"), ""),
        ("single stream tok/s", r.get("single_stream_tok_s"), ">= 27"),
        ("baseline single stream tok/s", r.get("baseline", {}).get("single_stream_tok_s"), ""),
        ("TTFT 512 / 2048 / 4096 s", [r.get("ttft_s", {}).get(str(n)) for n in (512, 2048, 4096)], ""),
    ]
    for n, c in r.get("concurrency", {}).items():
        rows.append(
            (
                f"{n} conv: aggregate tok/s, p50/p95 TTFT s",
                [c.get("aggregate_tok_s"), c.get("p50_ttft_s"), c.get("p95_ttft_s")],
                ">= 350, p95 <= 1.5" if n == "16" else "",
            )
        )
    rows += [
        ("peak GPU memory GiB", r.get("peak_gpu_mem_gib"), ""),
        ("cold / warm start s", [r.get("cold_start_s"), r.get("warm_start_s")], "warm <= 30"),
    ]
    print("\n| figure | value | target |\n| --- | --- | --- |")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")


if __name__ == "__main__":
    main()
