"""Multi-turn benchmark: channels that keep talking, each prompt the whole conversation so far (issue 12).

``--channels`` channels each send their k-th message at the same moment (``LocalEngine.generate``, all at once), for
``--turns`` turns: the first message ``--first`` tokens, each follow-up ``--follow`` tokens, each reply forced to
``--reply`` tokens. The prompt is built from the real chat turns (user, assistant, user, ...) with the replies as the
engine streamed them, through the engine's chat template, as the bot builds it. Per turn: prompt tokens, p50/p95
time to first token (``generate`` call to first text chunk), aggregate tok/s (channels x reply / wall time from the
calls to the last chunk), and ``prefix_hit_tokens``: prompt tokens whose KV the decoder reused instead of computing.

Reuses bench/gpu_70b.py's pieces: the 70B shape with random weights materialised on the GPU, the offline word-level
tokenizer (Llama-3 vocabulary and chat template), and EngineBench (the LocalEngine, replies forced to full length).
The vocabulary projection's rows of the special tokens are zeroed: with random weights a reply would otherwise hold
a special token now and then, which the engine's reply text cannot carry back (the next prompt then differs from
what was decoded from that token on), a break in reuse that real replies, ended by <|eot_id|>, do not have.

``--compare-no-reuse`` runs the same workload again (new conversations) on the same engine with prefix reuse turned
off, after the reused run, into ``no_reuse`` in the same file. ``--no-reuse`` runs only that. The first turn of the
first run is the first burst after the engine started (one 512-token request before it); the no-reuse run's first
turn is the same load on a warm engine.

  python3 bench/multiturn.py --fp8 --compare-no-reuse --out $OUT          # one H200, FP8 weights
  python3 bench/multiturn.py --fp8-kv --out $OUT                          # one H200, bf16 weights, FP8 KV cache
  .venv/bin/python bench/multiturn.py --shape tiny --device cpu --channels 2 --turns 3 --first 40 --follow 8 \\
      --reply 8 --out /tmp/multiturn-smoke                                 # CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import gpu_70b as g
from bot.domain import ChatTurn, GenerationParams, GenerationRequest, QueuePosition, Role

TARGETS = {
    "fp8": {"p95_ttft_s_turn1": 1.5, "p95_ttft_s_later": 0.8, "aggregate_tok_s": 600},
    "bf16-fp8kv": {"p95_ttft_s_turn1": 2.0, "p95_ttft_s_later": 2.0, "aggregate_tok_s": 330},
}


def quiet_special_tokens(model: Any) -> None:
    """Zero the vocabulary projection's rows of the special tokens: their logits sit at the middle of the random
    ones, far outside the top-p nucleus, so replies carry only ordinary words (see the module docstring)."""
    with torch.no_grad():
        model.lm_head.weight[g.SPECIAL_START :].zero_()


class Channel:
    """One conversation: its turns so far, as the bot would send them."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.seed = seed
        self.turns: list[ChatTurn] = []

    def say(self, tokens: int, turn: int) -> tuple[ChatTurn, ...]:
        words = [f"t{i}" for i in g.prompt(tokens, self.seed * 1000 + turn)]
        self.turns.append(ChatTurn(Role.USER, " ".join(words)))
        return tuple(self.turns)

    def heard(self, reply: str) -> None:
        self.turns.append(ChatTurn(Role.ASSISTANT, reply))


async def one_turn(
    bench: g.EngineBench, channels: list[Channel], turn: int, args: argparse.Namespace
) -> dict:
    """Every channel sends its ``turn``-th message at once; waits for every reply."""
    inner = bench.inner
    tokenizer = bench.engine.tokenizer
    size = args.first if turn == 0 else args.follow
    requests = []
    for ch in channels:
        turns = ch.say(size, turn)
        requests.append(
            GenerationRequest(
                f"{ch.name}-turn{turn + 1}",
                ch.name,
                turns,
                GenerationParams(max_new_tokens=args.reply, **g.SAMPLING),  # type: ignore[arg-type]
            )
        )
    prompt_tokens = [len(tokenizer.encode(r.turns)) for r in requests]
    hits_before = getattr(inner, "prefix_hit_tokens", 0)

    async def stream(request: GenerationRequest) -> tuple[list[float], str]:
        times: list[float] = []
        parts: list[str] = []
        async for event in bench.engine.generate(request):
            if not isinstance(event, QueuePosition):
                times.append(time.perf_counter())
                parts.append(event)
        tokens = bench.engine.stats.tokens_by_request.get(request.request_id, 0)
        if tokens != args.reply or not times:
            raise RuntimeError(f"{request.request_id}: {tokens} tokens, {len(times)} chunks")
        return times, "".join(parts)

    t0 = time.perf_counter()
    done = await asyncio.gather(*(stream(r) for r in requests))
    wall = max(times[-1] for times, _ in done) - t0
    for ch, (_, text) in zip(channels, done, strict=True):
        ch.heard(text.strip())
    ttfts = sorted(times[0] - t0 for times, _ in done)
    n = len(ttfts)
    return {
        "turn": turn + 1,
        "prompt_tokens": int(statistics.median(prompt_tokens)),
        "p50_ttft_s": round(statistics.median(ttfts), 3),
        "p95_ttft_s": round(ttfts[min(n - 1, round(0.95 * (n - 1)))], 3),
        "max_ttft_s": round(ttfts[-1], 3),
        "aggregate_tok_s": round(n * args.reply / wall, 2),
        "prefix_hit_tokens": getattr(inner, "prefix_hit_tokens", 0) - hits_before,
        "prompt_tokens_total": sum(prompt_tokens),
        "wall_s": round(wall, 2),
    }


async def workload(
    bench: g.EngineBench, args: argparse.Namespace, key: str, seed: int, results: g.Results
) -> None:
    channels = [Channel(f"{key}-ch{i}", seed + i) for i in range(args.channels)]
    for turn in range(args.turns):
        result = await one_turn(bench, channels, turn, args)
        results.log(f"{key}.turn{turn + 1}", result)
    evictions = getattr(getattr(bench.inner, "pool", None), "evictions", None)
    if evictions is not None:
        results.log(f"{key}.kv_blocks_evicted_so_far", evictions)


async def set_reuse(bench: g.EngineBench, on: bool) -> None:
    """Prefix reuse on or off, on the worker thread between two steps."""
    inner = bench.inner
    await bench.engine._on_worker(lambda: inner.set_prefix_cache(on))  # type: ignore[union-attr]


def make_inner(args: argparse.Namespace) -> Any:
    """The engine's own decoder factory, with the FP8 KV cache setting (EngineBench builds the other settings)."""
    from inference.decoders import make_decoder

    def build(model: Any, settings: Any) -> Any:
        return make_decoder(model, settings.model_copy(update={"fp8_kv_cache": args.fp8_kv}))

    return build


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(g.SHAPES), default="70b")
    ap.add_argument("--layers", type=int, default=None, help="override the shape's layer count")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (with --shape tiny)")
    ap.add_argument("--fp8", action="store_true", help="engine.fp8_weights: FP8 weight-only decode")
    ap.add_argument(
        "--fp8-kv", action="store_true", help="engine.fp8_kv_cache: e4m3 KV with per-token scales"
    )
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--first", type=int, default=512, help="tokens of each channel's first message")
    ap.add_argument("--follow", type=int, default=64, help="tokens of each follow-up message")
    ap.add_argument("--reply", type=int, default=256, help="tokens of each reply (forced)")
    ap.add_argument("--no-reuse", action="store_true", help="engine.prefix_cache off for the whole run")
    ap.add_argument(
        "--compare-no-reuse",
        action="store_true",
        help="after the run with reuse, run new conversations with reuse off on the same engine (key no_reuse)",
    )
    ap.add_argument(
        "--whole-prompt",
        action="store_true",
        help="engine.interleave_prefill off (the whole prompt prefilled at admission); default: the bot's default, on",
    )
    ap.add_argument("--capacity", type=int, default=None, help="decoder slots; default: --channels")
    ap.add_argument(
        "--setup", default=None, help="results file multiturn-<setup>.json; default from the options"
    )
    ap.add_argument("--out", default=os.environ.get("RESULTS_DIR", "bench/results"))
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    args.capacity = args.capacity or args.channels
    args.lora_slots, args.lora_rank = 0, 16  # EngineBench's adapter pool: none here (base model only)
    args.interleave = not args.whole_prompt
    if args.setup is None:
        base = "h200x1" if args.shape == "70b" else f"{args.shape}-{args.device}"
        precision = "fp8" if args.fp8 else ("bf16" if args.device == "cuda" else "fp32")
        kv = "-fp8kv" if args.fp8_kv else ""
        args.setup = f"{base}-{precision}{kv}" + ("-noreuse" if args.no_reuse else "")
    return args


def record_setup(args: argparse.Namespace, on_cuda: bool) -> g.Results:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = g.Results(out_dir / f"multiturn-{args.setup}.json")
    gpu = f"1 x {torch.cuda.get_device_name(0)}" if on_cuda else f"none (CPU smoke run, shape {args.shape})"
    results.log("setup.gpus", gpu)
    results.log(
        "setup.precision",
        ("FP8 e4m3 weights (weight-only)" if args.fp8 else ("bf16" if on_cuda else "float32") + " weights")
        + (
            ", FP8 e4m3 KV cache with one float32 scale per token and head"
            if args.fp8_kv
            else ", KV cache in the activations' dtype"
        ),
    )
    results.log(
        "setup.engine",
        f'LocalEngine via Engine.generate, EngineSettings(decoder="static", max_batch_size={args.capacity}, '
        f"fp8_weights={args.fp8}, fp8_kv_cache={args.fp8_kv}, interleave_prefill={args.interleave}, "
        f"prefix_cache={not args.no_reuse}); "
        "inference.fast.StaticSlotDecoder; offline word-level tokenizer with the Llama-3 vocabulary and chat "
        "template; special tokens' lm_head rows zeroed (replies carry only ordinary words)",
    )
    results.log("setup.shape", {"name": args.shape, **g.SHAPES[args.shape], "layers_override": args.layers})
    results.log(
        "setup.workload",
        {
            "channels": args.channels,
            "turns": args.turns,
            "first_message_tokens": args.first,
            "follow_up_tokens": args.follow,
            "reply_tokens": args.reply,
            "sampling": g.SAMPLING,
            "arrival": "every channel sends its k-th message at the same moment, after all replies of turn k-1",
        },
    )
    results.log(
        "setup.versions",
        {"torch": torch.__version__, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")},
    )
    this_run = "python3 bench/multiturn.py " + " ".join(sys.argv[1:])
    script = os.environ.get("BENCH_COMMAND")
    results.log("command", f"{script}   (this run: {this_run})" if script else this_run)
    return results


def check_targets(args: argparse.Namespace, results: g.Results) -> None:
    """Each target of issue 12 for this setup: met, or by how much it was missed (FP8 weights only here)."""
    name = "fp8" if args.fp8 and not args.fp8_kv else "bf16-fp8kv" if args.fp8_kv and not args.fp8 else None
    if name is None or args.shape != "70b" or args.channels != 16:
        return
    turns = [v for k, v in sorted(results.get("reuse", {}).items()) if k.startswith("turn")]
    if not turns:
        return
    t = TARGETS[name]
    first, later = turns[0], turns[1:]
    notes = {
        f"p95_ttft_s turn 1 <= {t['p95_ttft_s_turn1']}": _verdict(
            first["p95_ttft_s"], t["p95_ttft_s_turn1"], lower=True
        ),
        f"p95_ttft_s turns 2-{len(turns)} <= {t['p95_ttft_s_later']}": _verdict(
            max((x["p95_ttft_s"] for x in later), default=0.0), t["p95_ttft_s_later"], lower=True
        ),
        f"aggregate_tok_s every turn >= {t['aggregate_tok_s']}": _verdict(
            min(x["aggregate_tok_s"] for x in turns), t["aggregate_tok_s"], lower=False
        ),
    }
    results.log("targets", notes)


def _verdict(value: float, target: float, *, lower: bool) -> str:
    met = value <= target if lower else value >= target
    return f"{'met' if met else 'missed'}: {value} (target {target})"


def main() -> None:
    args = parse_args()
    on_cuda = args.device == "cuda"
    results = record_setup(args, on_cuda)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="hanbot-fast-cache-")
    t = time.perf_counter()
    model, _ = g.build_70b(args.layers, args.shape, args.device)
    quiet_special_tokens(model)
    results.log("materialise_s", round(time.perf_counter() - t, 2))
    bench, warm = g.start_engine(model, args, cache_dir, make_inner(args))
    results.log("start_to_first_chunk_s", round(warm, 2))
    inner = bench.inner
    results.log("decoder.class", type(inner).__name__)
    results.log("decoder.kv_tokens", getattr(inner, "kv_tokens", None))
    # pipelined decode steps (HANBOT_PIPELINE_STEPS=0/1 for an A/B; a tensor-parallel leader's decoder is its inner)
    results.log("decoder.pipeline_steps", getattr(getattr(inner, "inner", inner), "pipeline_steps", None))

    async def run_all() -> None:
        try:
            if args.no_reuse:
                await set_reuse(bench, False)
                await workload(bench, args, "no_reuse", 100, results)
                return
            await workload(bench, args, "reuse", 100, results)
            if args.compare_no_reuse:
                await set_reuse(bench, False)
                await workload(bench, args, "no_reuse", 200, results)
        finally:
            if on_cuda:
                results.log("peak_gpu_mem_gib", round(torch.cuda.max_memory_allocated() / g.GIB, 2))
            await bench.engine.aclose()

    asyncio.run(run_all())
    check_targets(args, results)
    print(f"wrote {results.path}", flush=True)


if __name__ == "__main__":
    main()
