"""GPU benchmark of the bot's engine on the real Llama-3-70B shape (random bf16 weights built on the GPU).

Decode speed depends on shapes, not on weight values, and the GPU machine cannot download weights, so the model is
built on the meta device and materialised with random tensors straight on the GPU (norms at one), the method of
``shared/tools/prototype_baseline_gpu.py``. Generation is forced to a fixed length (no stop token).

``--via engine`` (the default) drives the bot's own engine through its public interface: a
``inference.local_engine.LocalEngine`` (decoder "static", capacity = the largest concurrency measured) built around
the materialised model and an offline tokenizer with the Llama-3 vocabulary size and chat template (word-level: the
word ``t<N>`` is token N, so a prompt of N tokens is N words), fed ``GenerationRequest`` turns through
``Engine.generate``; TTFT is the time from calling ``generate`` to its first text chunk. Replies are forced to the
full length by the wrapper of ``bench/engine_cpu.py`` (terminators, here every special-token id, are replaced by an
ordinary token before the engine sees them). ``--via decoder`` keeps the earlier path: ``inference.fast.
StaticSlotDecoder`` driven through the BatchDecoder interface with a scheduler loop like the LocalEngine's. Both
measure: copy bandwidth and the bandwidth floor, single-stream decode tok/s, TTFT at 512/2048/4096 prompt tokens,
aggregate tok/s and p50/p95 TTFT at 1/4/16/32 conversations arriving together (512-token prompts, 256 new tokens,
temperature 0.6, top_p 0.9, repetition_penalty 1.1), graph-replay time of one decode step per batch size, peak GPU
memory, and start-up (weights in memory → first token) cold (empty kernel cache, in a child process) and warm.
Run the prototype baseline first in the same call and pass its JSON with --baseline.

  RESULTS_DIR=$OUT python3 .gpu/prototype_baseline_gpu.py
  python3 bench/gpu_70b.py --baseline $OUT/baseline.json --out $OUT

The engine path needs pydantic & co. on the GPU machine: ``bench/gpu_wheels.sh`` fetches them (docs/gpu.md has the
one-call command). CPU smoke run of the same engine-driven code on a 2-layer model (static decoder, eager CPU path):

  .venv/bin/python bench/gpu_70b.py --shape tiny --device cpu --no-cold --new 8 --concurrency 1,4 \
      --ttft-prompts 32,64 --out /tmp/gpu-bench-smoke

``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` is set unless the caller sets it: the 2048-token TTFT ran out of
memory in a fragmented 7.8 GiB headroom without it (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before torch is imported: fragmented cache blocks made the 2048-token prefill run out of memory (docs/gpu.md).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.domain import GenerationParams
from inference.decoder import SlotRequest
from inference.fast import StaticSlotDecoder

GIB = 1 << 30
SAMPLING: dict[str, Any] = dict(temperature=0.6, top_p=0.9, repetition_penalty=1.1, do_sample=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Results:
    """The figures of one run: nested dicts under dotted keys (``concurrency.16`` → ``{"concurrency": {"16": ...}}``),
    each printed as it comes and the whole rewritten to ``path`` (when set), so a run cut short keeps what it
    measured."""

    def __init__(self, path: Path | None = None) -> None:
        self.data: dict[str, Any] = {}
        self.path = path

    def log(self, key: str, value: Any) -> None:
        cur = self.data
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        print(f"{key} = {value}", flush=True)
        if self.path is not None:
            self.path.write_text(json.dumps(self.data, indent=1))

    def get(self, key: str, default: Any = None) -> Any:
        """The value under a dotted key, or ``default``."""
        cur: Any = self.data
        for p in key.split("."):
            if not isinstance(cur, dict) or p not in cur:
                return default
            cur = cur[p]
        return cur


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


SHAPES: dict[str, dict[str, Any]] = {
    # the real Llama-3-70B shape
    "70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
    # CPU smoke test of the same code: Llama-3's vocabulary, 2 small layers
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def config_for(shape: str = "70b", layers: int | None = None):
    from transformers import LlamaConfig

    dims: dict[str, Any] = dict(SHAPES[shape])
    if layers is not None:
        dims["num_hidden_layers"] = layers
    dims.update(
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128009,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**dims)


def meta_model(cfg, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    with init_empty_weights():
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()  # type: ignore[arg-type]


def build_70b(layers: int | None = None, shape: str = "70b", device: str = "cuda"):
    """The model on the meta device, then random weights (norms at one) materialised straight on ``device``:
    bf16 on the GPU, float32 on the CPU (the static decoder's CPU path is checked in float32)."""
    from accelerate.utils import set_module_tensor_to_device

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = meta_model(config_for(shape, layers), dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, p in list(model.named_parameters()):
        set_module_tensor_to_device(
            model, name, device, value=random_value(name, p.shape, dtype, device, gen)
        )
    model.model.rotary_emb.to(device)
    model.eval()
    nparams = sum(p.numel() for p in model.parameters())
    return model, nparams


def random_value(
    name: str, shape: Any, dtype: torch.dtype, device: str, gen: torch.Generator
) -> torch.Tensor:
    """One parameter of the random model: norms at one, the rest normal(0, 0.02) drawn from ``gen``."""
    if name.endswith("norm.weight") or "layernorm" in name:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device).normal_(0, 0.02, generator=gen)


class InOrder:
    """``build_70b``'s random parameters as a ``weights.Fetch``: drawn from one generator in the model's parameter
    order, whatever order they are asked for in. Asking for one draws each parameter before it not drawn yet and
    keeps those until they are asked for; a parameter handed out is forgotten (its memory is the caller's). One
    GPU: a slice asked for is cut from the whole tensor, as ``weights.fetch_from_model`` cuts it."""

    def __init__(self, cfg: Any, device: str, dtype: torch.dtype, seed: int = 0) -> None:
        self._todo = [(name, p.shape) for name, p in meta_model(cfg, dtype).named_parameters()][::-1]
        self._drawn: dict[str, torch.Tensor] = {}
        self._device, self._dtype = device, dtype
        self._gen = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, name: str, dim: int | None, part: slice | None) -> torch.Tensor:
        while name not in self._drawn:
            if not self._todo:
                raise KeyError(f"{name} is not a parameter of the model, or was handed out already")
            next_name, shape = self._todo.pop()
            self._drawn[next_name] = random_value(next_name, shape, self._dtype, self._device, self._gen)
        t = self._drawn.pop(name)
        if (
            dim is None or part is None
        ):  # sliced as weights.fetch_from_model slices (one GPU: the whole tensor)
            return t
        return t[part] if dim == 0 else t[:, part]


def fp8_weights_by_layer(cfg: Any, device: str):
    """The FP8 decoder's weights (``weights.build_weights``, as ``engine.fp8_weights`` builds them from a bf16
    model) from ``build_70b``'s random values, without the bf16 model ever whole on the device: each layer is drawn
    just before it is quantised and dropped right after, so the peak is the FP8 weights, the bf16 embedding and
    about one bf16 layer (69 GiB on the 70B instead of 138 GiB: it fits an H100). Equal, tensor for tensor, to what
    the decoder builds from ``build_70b``'s model (tests/inference/test_gpu_bench_smoke.py)."""
    from inference.fast.weights import build_weights

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return build_weights(cfg, InOrder(cfg, device, dtype), device=torch.device(device), dtype=dtype, fp8=True)


def decoder_over(weights: Any):
    """A decoder factory for EngineBench: a StaticSlotDecoder over weights already built, with the options the
    engine settings give (``inference.decoders.static_options``, as ``make_decoder`` passes them)."""
    from inference.decoders import static_options

    def build(_model: Any, settings: Any) -> StaticSlotDecoder:
        return StaticSlotDecoder(weights, **static_options(settings))

    return build


def random_fetch(cfg, device: torch.device, dtype: torch.dtype, seed: int):
    """A ``weights.Fetch`` of random values (norms at one) with the checkpoint's names and shapes: a
    tensor-parallel rank builds just its slices on its GPU, as it would read them from safetensors."""
    h, inter, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = {
        "q_proj": (q, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, q),
        "gate_proj": (inter, h),
        "up_proj": (inter, h),
        "down_proj": (h, inter),
        "embed_tokens": (vocab, h),
        "lm_head": (vocab, h),
    }
    gen = torch.Generator(device=device).manual_seed(seed)

    def fetch(name: str, dim: int | None, part: slice | None) -> torch.Tensor:
        if name.endswith("norm.weight"):
            return torch.ones(h, dtype=dtype, device=device)
        shape = list(shapes[name.split(".")[-2]])
        if dim is not None and part is not None:
            shape[dim] = len(range(*part.indices(shape[dim])))
        return torch.empty(shape, dtype=dtype, device=device).normal_(0, 0.02, generator=gen)

    return fetch


def prompt(n: int, seed: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(1000, 120000, (n,), generator=g).tolist())


def start_decoder(model, args, cache_dir: str) -> tuple[StaticSlotDecoder, float]:
    """Construct the decoder and serve one first token; seconds from weights-in-memory to that token."""
    sync()
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
    sync()  # a pipelined decoder's last step is still running
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
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end))
            out[str(b)] = round(statistics.median(times), 3)
        for s in slots:
            dec.release(s)
    return out


def guarded(name: str, fn, results: Results, dec: StaticSlotDecoder | None = None) -> None:
    """Run one phase; a failure is recorded, its requests released, and the next phase still runs."""
    try:
        fn()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        results.log(f"errors.{name}", repr(exc)[:800])
        if dec is not None:
            for slot in range(dec.capacity):
                dec.release(slot)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def single_phase(dec: StaticSlotDecoder, args, results: Results) -> None:
    best = 0.0
    for _ in range(2):
        tok_s, _t512 = single_stream(dec, args.new)
        best = max(best, tok_s)
    results.log("single_stream_tok_s", round(best, 2))
    if results.get("bandwidth_floor_tok_s"):
        results.log("single_stream_fraction_of_floor", round(best / results.get("bandwidth_floor_tok_s"), 3))


# ---------------------------------------------------------------- the engine-driven path (--via engine)

SPECIAL_START = 128000  # Llama-3: ids 128000..128255 are special tokens
LLAMA3_NAMED = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
}
FILLER_ID = 1000  # replaces a special token sampled by the random model, so the reply runs on as text


def offline_tokenizer(vocab_size: int = 128256):
    """A word-level tokenizer with Llama-3's vocabulary size, special tokens and chat template, built in-process
    (the GPU machine downloads nothing): token N is the word ``t<N>`` (ids 0..2 are the role names), so a prompt of
    N tokens is N words and a decoded reply is words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from inference.demo_model import LLAMA3_CHAT_TEMPLATE

    roles = ("system", "user", "assistant")
    vocab = {(roles[i] if i < len(roles) else f"t{i}"): i for i in range(SPECIAL_START)}
    specials = [
        LLAMA3_NAMED.get(i, f"<|reserved_special_token_{i - SPECIAL_START}|>")
        for i in range(SPECIAL_START, vocab_size)
    ]
    vocab.update({name: SPECIAL_START + k for k, name in enumerate(specials)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"offline tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
    return tokenizer


class EngineBench:
    """A LocalEngine (decoder "static") around the materialised model, fed GenerationRequests whose prompts have
    exactly the asked number of tokens, every reply forced to its full length."""

    def __init__(self, model, args: argparse.Namespace, cache_dir: str, make_inner=None) -> None:
        """``make_inner(model, settings)`` builds the decoder (default: the engine's own ``make_decoder``)."""
        from bench.engine_cpu import ForcedLength
        from bot.settings import EngineSettings, GenerationSettings
        from inference.decoder import BatchDecoder
        from inference.decoders import make_decoder
        from inference.local_engine import LocalEngine

        class NoStop(ForcedLength):
            """bench/engine_cpu.py's wrapper, with every special-token id (terminators included) replaced."""

            def _swap(self, token: int) -> int:
                return FILLER_ID if token >= SPECIAL_START else token

        self.inner: BatchDecoder | None = None

        def factory(m: Any, settings: EngineSettings) -> BatchDecoder:
            self.inner = (make_inner or make_decoder)(m, settings)  # "static" → inference.fast
            return NoStop(self.inner, frozenset(), FILLER_ID)

        self.interleave = args.interleave
        self.tokenizer = offline_tokenizer(model.config.vocab_size)
        self.engine = LocalEngine(
            model,
            self.tokenizer,
            engine=EngineSettings(
                decoder="static",
                max_batch_size=args.capacity,
                queue_limit=max(64, 2 * args.capacity),
                cache_dir=cache_dir,
                fp8_weights=args.fp8,
                interleave_prefill=args.interleave,
                lora_slots=args.lora_slots,
                lora_max_rank=args.lora_rank,
                reserve_training_gib=getattr(args, "reserve_training_gib", 0.0),
            ),
            generation=GenerationSettings(timeout_s=3600),
            context_length=model.config.max_position_embeddings,
            decoder_factory=factory,
        )
        self._overhead = len(self.engine.tokenizer.encode(self._turns(["t1000"]))) - 1
        self._ids = 0

    @staticmethod
    def _turns(words: list[str]) -> tuple:
        from bot.domain import ChatTurn, Role

        return (ChatTurn(Role.USER, " ".join(words)),)

    def request(
        self, prompt_tokens: int, new: int, seed: int, channel: str | None = None, lora: str | None = None
    ):
        """A GenerationRequest whose encoded prompt (chat template included) is exactly ``prompt_tokens`` long;
        ``lora``: the version that serves it (None: the engine's default)."""
        from bot.domain import GenerationRequest

        words = [f"t{i}" for i in prompt(prompt_tokens - self._overhead, seed)]
        turns = self._turns(words)
        got = len(self.engine.tokenizer.encode(turns))
        if got != prompt_tokens:
            raise RuntimeError(f"prompt has {got} tokens, wanted {prompt_tokens}")
        self._ids += 1
        rid = f"bench-{self._ids}"
        return GenerationRequest(
            rid,
            channel or rid,
            turns,
            GenerationParams(max_new_tokens=new, **SAMPLING),  # type: ignore[arg-type]
            lora=lora,
        )

    async def stream(self, request) -> list[float]:
        """perf_counter time of each text chunk of the reply; checks that the reply ran to its full length."""
        from bot.domain import QueuePosition

        times: list[float] = []
        async for event in self.engine.generate(request):
            if not isinstance(event, QueuePosition):
                times.append(time.perf_counter())
        tokens = self.engine.stats.tokens_by_request.get(request.request_id, 0)
        if tokens != request.params.max_new_tokens or not times:
            raise RuntimeError(f"{request.request_id}: {tokens} tokens, {len(times)} chunks")
        return times

    async def first_token(self, prompt_tokens: int, new: int, seed: int) -> tuple[float, list[float]]:
        t = time.perf_counter()
        times = await self.stream(self.request(prompt_tokens, new, seed))
        return times[0] - t, times

    async def single_stream(self, new: int) -> float:
        """Decode tok/s of one conversation (512-token prompt), from its first chunk to its last (one chunk a token)."""
        _, times = await self.first_token(512, new, 7)
        return (len(times) - 1) / (times[-1] - times[0])

    async def ttft(self, n: int) -> float:
        return statistics.median([(await self.first_token(n, 16, 50 + rep))[0] for rep in range(3)])

    async def conversations(self, n: int, prompt_len: int, new: int) -> dict:
        """n requests (n channels) call generate at t=0; TTFT is each one's time to its first text chunk."""
        requests = [self.request(prompt_len, new, 100 + i) for i in range(n)]
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(self.stream(r) for r in requests))
        wall = max(times[-1] for times in streams) - t0
        ttfts = sorted(times[0] - t0 for times in streams)
        spans = [(times[0], times[-1]) for times in streams]
        max_running = max(sum(1 for a, b in spans if a <= start <= b) for start, _ in spans)
        gaps = sorted(b - a for times in streams for a, b in itertools.pairwise(times))
        return {
            "max_stream_gap_s": round(gaps[-1], 3) if gaps else None,  # longest pause inside a running reply
            "p99_stream_gap_s": round(gaps[int(0.99 * (len(gaps) - 1))], 3) if gaps else None,
            "aggregate_tok_s": round(n * new / wall, 2),
            "p50_ttft_s": round(statistics.median(ttfts), 3),
            "p95_ttft_s": round(ttfts[min(n - 1, round(0.95 * (n - 1)))], 3),
            "max_ttft_s": round(ttfts[-1], 3),
            "wall_s": round(wall, 2),
            "max_running": max_running,
            "admission": "LocalEngine worker: "
            + (
                "prompts queued, prefilled in chunks inside the decode steps (interleave_prefill)"
                if self.interleave
                else "whole prompt prefilled at admission, between decode steps"
            ),
        }


def start_engine(
    model, args: argparse.Namespace, cache_dir: str, make_inner=None
) -> tuple[EngineBench, float]:
    """Build the engine and serve one first text chunk; seconds from weights-in-memory to that chunk."""
    sync()
    t = time.perf_counter()
    bench = EngineBench(model, args, cache_dir, make_inner)
    times = asyncio.run(bench.stream(bench.request(512, 8, 0)))
    return bench, times[0] - t  # to the first text chunk; the 7 more tokens of this warm-up are not counted


def engine_phases(bench: EngineBench, args: argparse.Namespace, on_cuda: bool, results: Results) -> None:
    async def run_all() -> None:
        async def single() -> None:
            best = max([await bench.single_stream(args.new) for _ in range(2)])
            results.log("single_stream_tok_s", round(best, 2))
            floor = results.get("bandwidth_floor_tok_s")
            if floor:
                results.log("single_stream_fraction_of_floor", round(best / floor, 3))

        await aguarded("single_stream", single, results)
        for n in args.ttft_prompts:
            await aguarded(
                f"ttft_s.{n}", lambda n=n: _log_async(results, f"ttft_s.{n}", bench.ttft(n)), results
            )
        for n in args.concurrency:
            key = f"concurrency.{n}"
            await aguarded(
                key,
                lambda n=n, key=key: _log_async(results, key, bench.conversations(n, 512, args.new)),
                results,
            )
        inner = bench.inner
        if on_cuda and isinstance(
            inner, StaticSlotDecoder
        ):  # graph replays on the idle engine's worker thread
            await aguarded(
                "decode_step_ms",
                lambda: _log_async(
                    results, "decode_step_ms", bench.engine._on_worker(lambda: step_times(inner))
                ),
                results,
            )
        if on_cuda:
            results.log("peak_gpu_mem_gib", round(torch.cuda.max_memory_allocated() / GIB, 2))
        await bench.engine.aclose()

    asyncio.run(run_all())
    results.log("setup.decoder_class", type(bench.inner).__name__)
    # pipelined decode steps (HANBOT_PIPELINE_STEPS=0/1 for an A/B; a tensor-parallel leader's decoder is its inner)
    results.log(
        "setup.pipeline_steps", getattr(getattr(bench.inner, "inner", bench.inner), "pipeline_steps", None)
    )


async def _log_async(results: Results, key: str, value) -> None:
    results.log(key, round(v, 3) if isinstance(v := await value, float) else v)


async def aguarded(name: str, fn, results: Results) -> None:
    try:
        await fn()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        results.log(f"errors.{name}", repr(exc)[:800])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def child_cold(args) -> None:
    model, make_inner = materialise(args)
    if args.via == "engine":
        bench, elapsed = start_engine(model, args, args.cache_dir, make_inner)
        asyncio.run(bench.engine.aclose())
    else:
        _, elapsed = start_decoder(model, args, args.cache_dir)
    print(json.dumps({"cold_start_s": elapsed}), flush=True)


def _ints(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--via",
        choices=("engine", "decoder"),
        default="engine",
        help="engine: LocalEngine.generate (default); decoder: StaticSlotDecoder directly",
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), default="70b")
    ap.add_argument("--layers", type=int, default=None, help="override the shape's layer count")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (with --shape tiny)")
    ap.add_argument("--fp8", action="store_true", help="engine.fp8_weights: FP8 weight-only decode")
    ap.add_argument(
        "--fp8-from-model",
        action="store_true",
        help="with --fp8: build the whole bf16 model on the GPU and let the decoder quantise it, as the bot does a "
        "loaded checkpoint (131 GiB: one H200 only); default: the same weights drawn and quantised layer by layer",
    )
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="engine.interleave_prefill (the bot's default): prompts prefilled in chunks inside the steps; without "
        "it the whole prompt is prefilled at admission, as the main committed figures were measured",
    )
    ap.add_argument(
        "--tp", type=int, default=1, help="tensor-parallel ranks; run under torchrun --nproc-per-node N"
    )
    ap.add_argument("--setup", default=None, help="results file gpu-<setup>.json; default from the options")
    ap.add_argument("--out", default=os.environ.get("RESULTS_DIR", "bench/results"))
    ap.add_argument("--baseline", default=None, help="the prototype baseline's JSON (same call)")
    ap.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="decoder slots; default: the largest concurrency (engine), 32 (decoder)",
    )
    ap.add_argument(
        "--prefill-chunk", type=int, default=2048, help="--via decoder only (the engine uses 2048)"
    )
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--concurrency", type=_ints, default=_ints("1,4,16,32"))
    ap.add_argument("--ttft-prompts", type=_ints, default=_ints("512,2048,4096"))
    ap.add_argument("--admission", default="submit,admit_many", help="--via decoder only")
    ap.add_argument(
        "--lora",
        action="store_true",
        help="LoRA mode (bench/lora_bench.py): random adapters on every adapted module, base in the same run; "
        "writes gpu-<setup>-lora.json",
    )
    ap.add_argument(
        "--lora-slots", type=int, default=None, help="engine.lora_slots (default: 4 with --lora, else 0)"
    )
    ap.add_argument(
        "--lora-rank", type=int, default=16, help="rank of the random adapters (engine.lora_max_rank)"
    )
    ap.add_argument(
        "--lora-tenants",
        type=int,
        default=0,
        help="with --lora: also N conversations spread over this many tenants' adapters, no base "
        "(lora.mixed<T>.concurrency.<N>; issue 19); the pool gets at least that many slots",
    )
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--child-cold", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    if args.lora and args.concurrency == _ints("1,4,16,32"):
        args.concurrency = [16]
    if args.lora_tenants and not args.lora:
        ap.error("--lora-tenants is a part of the LoRA mode (--lora)")
    if args.lora_slots is None:
        args.lora_slots = max(4, args.lora_tenants) if args.lora else 0
    if args.lora_slots < args.lora_tenants:
        ap.error(
            f"--lora-tenants {args.lora_tenants} needs --lora-slots >= {args.lora_tenants} (all at once)"
        )
    if args.lora:
        args.no_cold = True  # the LoRA figures are ratios to the base measured in the same warm engine
    if args.capacity is None:
        args.capacity = max(args.concurrency) if args.via == "engine" else 32
    if (args.fp8 or args.tp > 1 or args.lora) and args.via != "engine":
        ap.error("--fp8, --tp and --lora drive the engine (--via engine)")
    if args.setup is None:
        precision = "fp8" if args.fp8 else "bf16"
        base = f"h200x{args.tp}-{precision}" if args.shape == "70b" else f"{args.shape}-{args.device}"
        if args.shape != "70b" and (args.fp8 or args.tp > 1):
            base += f"-tp{args.tp}-{precision}"
        args.setup = base if args.via == "decoder" else f"{base}-lora" if args.lora else f"{base}-engine"
    return args


def main() -> None:
    args = parse_args()
    if args.child_cold:
        child_cold(args)
        return
    if args.tp > 1:
        tensor_parallel_main(args)
        return
    on_cuda = args.device == "cuda"
    results = start_results(args, on_cuda)
    bw = measure_bandwidth(on_cuda, results)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="hanbot-fast-cache-")
    if not args.no_cold:
        cold_start_in_child(args, cache_dir, results)
    model, make_inner = materialise(args, results, bw)
    if on_cuda:
        results.log("gpu_free_after_weights_GiB", round(torch.cuda.mem_get_info()[0] / GIB, 2))
        torch.cuda.reset_peak_memory_stats()
    if args.via == "engine":
        bench, warm = start_engine(model, args, cache_dir, make_inner)
        results.log("warm_start_s", round(warm, 2))
        log_decoder(bench.inner, results, bw)
        if args.lora:
            from bench.lora_bench import lora_phases

            lora_phases(bench, args, model.config, results.log, on_cuda)
        else:
            engine_phases(bench, args, on_cuda, results)
    else:
        decoder_phases(model, args, cache_dir, results)
        if on_cuda:
            results.log("peak_gpu_mem_gib", round(torch.cuda.max_memory_allocated() / GIB, 2))
    finish_results(args, results)


def materialise(
    args: argparse.Namespace, results: Results | None = None, bw: float | None = None
) -> tuple[Any, Any]:
    """The model the engine is given and its decoder factory (None: the engine's own ``make_decoder``).

    bf16 (float32 on the CPU): ``build_70b``'s model. With --fp8: a meta-device skeleton and the FP8 weights drawn
    and quantised layer by layer (``fp8_weights_by_layer``), so the bf16 model is never whole on the GPU; with
    --fp8-from-model the bf16 model, which the decoder quantises as the bot does a loaded checkpoint."""
    t = time.perf_counter()
    make_inner = None
    if args.fp8 and not args.fp8_from_model:
        cfg = config_for(args.shape, args.layers)
        weights = fp8_weights_by_layer(cfg, args.device)
        model = meta_model(cfg, weights.dtype)
        make_inner = decoder_over(weights)
    else:
        model, _ = build_70b(args.layers, args.shape, args.device)
    sync()
    if results is not None:
        nparams = sum(p.numel() for p in model.parameters())
        results.log("materialise_s", round(time.perf_counter() - t, 2))
        results.log("weight_GB", round(nparams * next(model.parameters()).element_size() / 1e9, 2))
        if bw is not None and not args.fp8:
            results.log("bandwidth_floor_tok_s", round(bw / (nparams * 2), 2))
    return model, make_inner


def start_results(args: argparse.Namespace, on_cuda: bool) -> Results:
    """Open the results file and record the setup and the command."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = Results(out_dir / f"gpu-{args.setup}.json")
    import transformers

    if on_cuda:
        results.log("setup.gpus", f"{args.tp} x {torch.cuda.get_device_name(0)}")
        results.log(
            "setup.precision",
            "FP8 e4m3 weights (weight-only, per-row scales, from bf16), bf16 activations and KV cache"
            if args.fp8
            else "bf16 weights and KV cache",
        )
    else:
        results.log("setup.gpus", f"none (CPU smoke run, shape {args.shape})")
        results.log(
            "setup.precision", "float32 weights and KV cache (CPU)" + (", FP8 weights" if args.fp8 else "")
        )
    if args.via == "engine":
        results.log(
            "setup.mechanism",
            "LocalEngine (static decoder) via Engine.generate: inference.local_engine.LocalEngine with "
            'EngineSettings(decoder="static", max_batch_size='
            + str(args.capacity)
            + (", fp8_weights=True" if args.fp8 else "")
            + (", interleave_prefill=True" if args.interleave else "")
            + (f", tensor_parallel={args.tp}" if args.tp > 1 else "")
            + "), its ModelWorker scheduling inference.fast.StaticSlotDecoder (paged static KV slots, Triton "
            "decode kernels, one CUDA graph per batch bucket, on-GPU sampler"
            + ("; FP8 weight-only matrix-vector kernels, FP8 prefill products" if args.fp8 else "")
            + (
                f"; tensor parallel over {args.tp} GPUs under torchrun: heads and MLP columns split, NCCL "
                "all-reduce (captured in the graphs) after the O and down projections, rank 0 runs the engine "
                "and the other ranks replay its decoder calls (inference.fast.mirror)"
                if args.tp > 1
                else ""
            )
            + "); offline word-level tokenizer with the Llama-3 vocabulary and chat template; TTFT = generate() "
            "call to first text chunk"
            + ("" if on_cuda else " (CPU smoke run: eager torch operations, no Triton, no graphs)"),
        )
    else:
        results.log(
            "setup.mechanism",
            "inference.fast.StaticSlotDecoder: paged static KV slots, Triton decode kernels, "
            "one CUDA graph per batch bucket, on-GPU sampler; driven through the BatchDecoder interface",
        )
    results.log("setup.shape", {"name": args.shape, **SHAPES[args.shape], "layers_override": args.layers})
    results.log(
        "setup.versions",
        {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        },
    )
    baseline_cmd = "RESULTS_DIR=$OUT python3 .gpu/prototype_baseline_gpu.py && " if args.baseline else ""
    launcher = f"torchrun --nproc-per-node {args.tp} " if args.tp > 1 else "python3 "
    this_run = launcher + "bench/gpu_70b.py " + " ".join(sys.argv[1:])
    # a device script that runs several things in one call names itself in BENCH_COMMAND
    script = os.environ.get("BENCH_COMMAND")
    results.log("command", f"{script}   (this run: {this_run})" if script else baseline_cmd + this_run)
    if args.fp8 and args.tp == 1:
        results.log(
            "setup.fp8_build",
            "from the bf16 model on the device, quantised by the decoder as a loaded checkpoint is (the whole bf16 "
            "model first: 131 GiB)"
            if args.fp8_from_model
            else "layer by layer in the bench (fp8_weights_by_layer): each layer's random bf16 weights drawn (the "
            "values of the bf16 model, same generator and order) and quantised by weights.build_weights before the "
            "next is drawn, so the peak is the FP8 weights plus one bf16 layer; the start times count from the FP8 "
            "weights in memory",
        )
    return results


def measure_bandwidth(on_cuda: bool, results: Results) -> float | None:
    bw = copy_bandwidth() if on_cuda else None
    if bw is not None:
        results.log("copy_bandwidth_TBps", round(bw / 1e12, 3))
    return bw


def cold_start_in_child(args: argparse.Namespace, cache_dir: str, results: Results) -> None:
    """Weights in memory → first token in a fresh process with an empty kernel cache (fills ``cache_dir``)."""
    env = dict(os.environ)
    env.pop("TRITON_CACHE_DIR", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    r = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child-cold",
            *("--via", args.via, "--shape", args.shape, "--device", args.device),
            *(("--layers", str(args.layers)) if args.layers is not None else ()),
            *(("--fp8",) if args.fp8 else ()),
            *(("--fp8-from-model",) if args.fp8_from_model else ()),
            *("--cache-dir", cache_dir, "--capacity", str(args.capacity)),
            *("--prefill-chunk", str(args.prefill_chunk)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode == 0 and lines:
        results.log("cold_start_s", round(json.loads(lines[-1])["cold_start_s"], 2))
    else:
        results.log("cold_start_error", (r.stderr or r.stdout)[-2000:])


def finish_results(args: argparse.Namespace, results: Results) -> None:
    if args.baseline and Path(args.baseline).is_file():
        base = json.loads(Path(args.baseline).read_text())
        b1 = base.get("prototype_decode_tok_s_bs1_sampling")
        results.log("baseline.single_stream_tok_s", b1)
        results.log("baseline.ttft_s.512", base.get("ttft_s_prompt512_bs1"))
        for bs in (4, 8, 16):
            results.log(
                f"baseline.concurrency.{bs}.aggregate_decode_tok_s",
                base.get(f"decode_tok_s_bs{bs}_sampling_aggregate"),
            )
            results.log(f"baseline.concurrency.{bs}.ttft_s", base.get(f"ttft_s_prompt512_bs{bs}"))
        results.log("baseline.raw", base)
        if b1:
            results.log(
                "ratio_single_stream_vs_baseline", round(results.get("single_stream_tok_s", 0.0) / b1, 2)
            )
    table(args, results)


def all_reduce_micro(group: Any, device: torch.device) -> dict[str, float]:
    """Microseconds per all-reduce of a decode step's [rows, 8192] bf16 tensor, 50 in a CUDA graph, per kind."""
    kinds = {"nccl": group._nccl.all_reduce}
    if group._p2p is not None:
        kinds["symm_mem"] = group._p2p.all_reduce
    out: dict[str, float] = {}
    for kind, fn in kinds.items():
        for rows in (1, 32):
            x = torch.zeros(rows, 8192, dtype=torch.bfloat16, device=device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn(x)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(50):
                    fn(x)
            torch.cuda.synchronize(device)
            group.barrier()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(5):
                graph.replay()
            end.record()
            end.synchronize()
            out[f"{kind}.rows{rows}"] = round(begin.elapsed_time(end) * 1e3 / 250, 2)
            del graph
    return out


def tensor_parallel_main(args: argparse.Namespace) -> None:
    """Under torchrun: every rank builds its random slice of the model on its GPU and a static decoder over it;
    rank 0 runs the engine and the measurements, the others follow rank 0's decoder calls."""
    from inference.fast.mirror import MirroredDecoder, follow
    from inference.fast.parallel import TensorParallel
    from inference.fast.weights import build_weights

    on_cuda = args.device == "cuda"
    group = TensorParallel.from_env("cuda" if on_cuda else "cpu")
    if group.world != args.tp:
        raise SystemExit(f"--tp {args.tp} but torchrun started {group.world} processes")
    device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    dtype = torch.bfloat16 if on_cuda else torch.float32
    leader = group.rank == 0
    results = start_results(args, on_cuda) if leader else Results()  # the other ranks record nothing
    bw = measure_bandwidth(on_cuda, results) if leader else None
    if on_cuda:
        micro = all_reduce_micro(group, torch.device("cuda", torch.cuda.current_device()))
        if leader:
            results.log("setup.all_reduce", group.all_reduce_kind)
            results.log("all_reduce_us_in_graph", micro)
    cfg = config_for(args.shape, args.layers)
    cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(), f"hanbot-tp-cache-{os.getpid()}")
    t = time.perf_counter()
    weights = build_weights(
        cfg,
        random_fetch(cfg, device, dtype, seed=group.rank),
        device=device,
        dtype=dtype,
        rank=group.rank,
        world=group.world,
        fp8=args.fp8,
    )
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    group.barrier()
    if leader:
        results.log("materialise_s", round(time.perf_counter() - t, 2))
        per_rank = weights.matrix_bytes() + weights.embed.numel() * weights.embed.element_size()
        results.log("weight_GB_per_gpu", round(per_rank / 1e9, 2))
        if bw is not None:
            results.log("bandwidth_floor_tok_s", round(bw / weights.matrix_bytes(), 2))
        if on_cuda:
            results.log("gpu_free_after_weights_GiB", round(torch.cuda.mem_get_info()[0] / GIB, 2))

    def rank_decoder(_m: Any = None, _s: Any = None) -> StaticSlotDecoder:
        return StaticSlotDecoder(
            weights,
            parallel=group,
            capacity=args.capacity,
            cache_dir=cache_dir,
            lora_slots=args.lora_slots,
            lora_max_rank=args.lora_rank,
        )

    if not leader:
        follow(rank_decoder(), group)
        return
    skeleton = meta_model(cfg, dtype)
    bench, start = start_engine(
        skeleton, args, cache_dir, lambda m, s: MirroredDecoder(rank_decoder(), group)
    )
    results.log("cold_start_s", round(start, 2))
    results.log(
        "start_note",
        "tensor parallel: cold_start_s is the first engine start in this process with an empty kernel cache "
        "(compilation and the matrix-product measurement included); no warm restart was measured",
    )
    log_decoder(bench.inner, results, bw)
    if args.lora:
        from bench.lora_bench import lora_phases

        lora_phases(bench, args, cfg, results.log, on_cuda)
    else:
        engine_phases(bench, args, on_cuda, results)
    finish_results(args, results)


def log_decoder(dec, results: Results, bw: float | None = None) -> None:
    dec = getattr(dec, "inner", dec)  # a tensor-parallel MirroredDecoder: rank 0's own decoder
    if not isinstance(dec, StaticSlotDecoder):
        results.log(
            "decoder_error", f"the engine chose {type(dec).__name__}, not the static decoder (see its log)"
        )
        return
    results.log("kv_cache_tokens", dec.kv_tokens)
    results.log("kv_cache_GiB", round(dec.kv_tokens * dec._weights.spec.kv_bytes_per_token / GIB, 2))
    if dec.fp8 or dec.parallel.world > 1:
        matrices = dec._weights.matrix_bytes()
        results.log("decode_matrix_GB_per_gpu", round(matrices / 1e9, 2))
        if bw is not None:
            results.log("bandwidth_floor_tok_s", round(bw / matrices, 2))
    plan = getattr(dec.model, "plan", None)
    if plan is not None:
        results.log(
            "gemm_plan", {"choices": {str(k): v for k, v in plan.choices.items()}, "timings": plan.timings}
        )


def decoder_phases(model, args: argparse.Namespace, cache_dir: str, results: Results) -> None:
    """The earlier path (--via decoder): StaticSlotDecoder driven directly."""
    try:
        dec, warm = start_decoder(model, args, cache_dir)
    except Exception as exc:  # keep going without graphs / Triton so the call still measures something
        results.log("decoder_error", repr(exc)[:1500])
        import traceback

        traceback.print_exc()
        torch.cuda.empty_cache()
        args.fallback = True
        os.environ["HANBOT_FAST_NO_TRITON"] = os.environ.get("BENCH_FALLBACK_NO_TRITON", "0")
        dec, warm = start_decoder(model, args, cache_dir)
    results.log("warm_start_s", round(warm, 2))
    log_decoder(dec, results)
    guarded("single_stream", lambda: single_phase(dec, args, results), results, dec)
    for n in args.ttft_prompts:
        guarded(f"ttft_s.{n}", lambda n=n: results.log(f"ttft_s.{n}", round(ttft(dec, n), 3)), results, dec)
    modes = args.admission.split(",")
    for n in args.concurrency:
        for mode in modes:
            key = f"concurrency.{n}" if mode == modes[0] else f"concurrency_{mode}.{n}"
            guarded(
                key,
                lambda n=n, mode=mode, key=key: results.log(
                    key, run_conversations(dec, n, 512, args.new, mode)
                ),
                results,
            )
    guarded("decode_step_ms", lambda: results.log("decode_step_ms", step_times(dec)), results, dec)


def table(args: argparse.Namespace, results: Results) -> None:
    r = results.data
    single_target = ">= 50" if args.tp > 1 else ">= 45" if args.fp8 else ">= 27"
    many_target = ">= 1000, p95 <= 2" if args.tp > 1 or args.fp8 else ""
    rows = [
        ("copy bandwidth TB/s", r.get("copy_bandwidth_TBps"), ""),
        ("bandwidth floor tok/s", r.get("bandwidth_floor_tok_s"), ""),
        ("single stream tok/s", r.get("single_stream_tok_s"), single_target),
        ("baseline single stream tok/s", r.get("baseline", {}).get("single_stream_tok_s"), ""),
        ("TTFT " + " / ".join(r.get("ttft_s", {})) + " s", list(r.get("ttft_s", {}).values()), ""),
    ]
    for n, c in r.get("concurrency", {}).items():
        rows.append(
            (
                f"{n} conv: aggregate tok/s, p50/p95 TTFT s",
                [c.get("aggregate_tok_s"), c.get("p50_ttft_s"), c.get("p95_ttft_s")],
                ">= 350, p95 <= 1.5" if n == "16" and args.tp == 1 else many_target if n == "32" else "",
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
