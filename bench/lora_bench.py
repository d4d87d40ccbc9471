"""The LoRA mode of bench/gpu_70b.py (``--lora``): what serving fine-tuned versions costs, against the base model
measured in the same run on the same engine (the adapter pool allocated in both cases).

Random rank-``--lora-rank`` adapters on every module the trainer adapts (``inference.finetune.modeling.
linear_layer_names``: every linear layer of the decoder layers and the output head) are written as PEFT folders
(adapter_config.json + adapter_model.safetensors) and loaded with ``LocalEngine.load_lora``; requests name their
version in ``GenerationRequest.lora``. Figures (keys under ``lora.``): one conversation with an adapter and its ratio
to the base; N conversations on one adapter; N conversations spread over 4 adapters and the base; with
``--lora-tenants T``, N conversations spread over T tenants' adapters (no base: each team on its own version,
``lora.mixed<T>.concurrency.<N>``); load + switch of a new version while 8 conversations stream; failed requests
over all of it.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bot.domain import BASE_MODEL

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapter(folder: Path, config: Any, rank: int, seed: int) -> int:
    """A PEFT LoRA folder with random A and B (bf16) on every projection and the head; returns its parameters."""
    from safetensors.torch import save_file

    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    hd = h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = {  # (in, out)
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def pair(prefix: str, fan_in: int, fan_out: int) -> None:
        # small values: the random model's replies stay in range; B nonzero so the product is really computed
        tensors[prefix + ".lora_A.weight"] = (
            torch.randn(rank, fan_in, generator=gen) * fan_in**-0.5
        ).bfloat16()
        tensors[prefix + ".lora_B.weight"] = (torch.randn(fan_out, rank, generator=gen) * 0.01).bfloat16()

    for i in range(config.num_hidden_layers):
        for module in MODULES:
            part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            pair(f"base_model.model.model.layers.{i}.{part}.{module}", *shapes[module])
    pair("base_model.model.lm_head", h, vocab)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": rank,
                "lora_alpha": 2 * rank,
                "target_modules": [*MODULES, "lm_head"],
                "bias": "none",
            }
        )
    )
    return sum(t.numel() for t in tensors.values())


async def _streams(bench: Any, n: int, new: int, loras: list[str | None], tag: str) -> tuple[dict, int]:
    """n conversations at once, conversation i on ``loras[i % len(loras)]``; (figures, failed requests)."""
    requests = [bench.request(512, new, 100 + i, lora=loras[i % len(loras)]) for i in range(n)]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(bench.stream(r) for r in requests), return_exceptions=True)
    streams = [r for r in results if not isinstance(r, BaseException)]
    failed = len(results) - len(streams)
    for r in results:
        if isinstance(r, BaseException):
            print(f"{tag}: request failed: {r!r}", flush=True)
    if not streams:
        return {"aggregate_tok_s": 0.0, "failed": failed}, failed
    wall = max(times[-1] for times in streams) - t0
    ttfts = sorted(times[0] - t0 for times in streams)
    spans = [(times[0], times[-1]) for times in streams]
    return {
        "aggregate_tok_s": round(len(streams) * new / wall, 2),
        "p50_ttft_s": round(ttfts[len(ttfts) // 2], 3),
        "max_ttft_s": round(ttfts[-1], 3),
        "wall_s": round(wall, 2),
        "failed": failed,
        # replies streaming at once, at most (below n: the KV cache or the slots made the others wait)
        "max_running": max(sum(1 for a, b in spans if a <= start <= b) for start, _ in spans),
    }, failed


async def _single(bench: Any, new: int, lora: str | None) -> float:
    """Decode tok/s of one conversation (512-token prompt), the better of two."""
    best = 0.0
    for rep in range(2):
        times = await bench.stream(bench.request(512, new, 7 + rep, lora=lora))
        best = max(best, (len(times) - 1) / (times[-1] - times[0]))
    return best


async def _switch_while_streaming(bench: Any, new: int, folder: Path, streams: int) -> tuple[float, int]:
    """Load a new version and make it the default while ``streams`` conversations run; (seconds, failed)."""
    requests = [bench.request(512, new, 400 + i) for i in range(streams)]
    tasks = [asyncio.ensure_future(bench.stream(r)) for r in requests]
    engine = bench.engine
    deadline = time.perf_counter() + 600
    while engine.counts()[1] < streams:  # all of them running
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{streams} conversations did not all start")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    t = time.perf_counter()
    await engine.load_lora("promoted", str(folder))
    await engine.use_lora("promoted")
    switch_s = time.perf_counter() - t
    after = await asyncio.gather(
        bench.stream(bench.request(512, 16, 499)), *tasks, return_exceptions=True
    )  # a request after the switch runs on the new default
    failed = sum(1 for r in after if isinstance(r, BaseException))
    for r in after:
        if isinstance(r, BaseException):
            print(f"switch: request failed: {r!r}", flush=True)
    return switch_s, failed


async def _tenants(bench: Any, args: Any, root: Path, tenants: list[str], base_n: dict, log: Any) -> int:
    """N conversations spread over the tenants' adapters (conversation i on tenant i mod T; no base), after
    loading those not loaded yet; the ratio is to the base's N conversations of the same run. Failed requests."""
    n = max(args.concurrency)
    engine = bench.engine
    key = f"lora.mixed{len(tenants)}"
    t = time.perf_counter()
    for name in tenants:
        if name not in engine._pool.loaded:
            await engine.load_lora(name, str(root / name))
    log(f"{key}.load_s", round(time.perf_counter() - t, 2))
    figures, failed = await _streams(bench, n, args.new, list(tenants), f"{len(tenants)} tenants")
    log(f"{key}.concurrency.{n}", {**figures, "versions": list(tenants)})
    log(f"{key}.concurrency.{n}.ratio", round(figures["aggregate_tok_s"] / base_n["aggregate_tok_s"], 3))
    return failed


def lora_step_times(dec: Any, key: str, buckets: tuple[int, ...] = (1, 16)) -> dict[str, dict[str, float]]:
    """Graph replay ms of one decode step per bucket, base graph and adapter graph, every row on adapter ``key``
    at 768 tokens of context (CUDA events, median of 20): the adapters' cost without any scheduling around it."""
    from bot.domain import GenerationParams
    from inference.decoder import SlotRequest

    out: dict[str, dict[str, float]] = {}
    params = GenerationParams(
        max_new_tokens=300, temperature=0.6, top_p=0.9, repetition_penalty=1.1, do_sample=True
    )
    for b in buckets:
        if b > dec.capacity or dec.pool.free_blocks < b * dec.pool.blocks_for(812):
            continue
        slots = list(range(b))
        prompt = tuple(range(1000, 1512))
        dec.admit_many([SlotRequest(s, prompt, params, lora=key) for s in slots])
        for _ in range(3):
            dec.step()
        times: dict[str, float] = {}
        for kind, graphs in (("base", dec._graphs), ("lora", dec._lora_graphs)):
            graph = graphs.get(b)
            if graph is None:
                continue
            samples = []
            for _ in range(20):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                graph.replay()
                end.record()
                end.synchronize()
                samples.append(begin.elapsed_time(end))
            times[kind] = round(sorted(samples)[len(samples) // 2], 3)
        out[str(b)] = times
        for s in slots:
            dec.release(s)
    return out


def _decoder(engine: Any) -> Any:
    """The decoder the engine serves with now (under the bench's and tensor parallelism's wrappers)."""
    decoder = engine.decoder
    decoder = getattr(decoder, "_inner", decoder)  # the bench's forced-length wrapper
    return getattr(decoder, "inner", decoder)  # MirroredDecoder: rank 0's own


def _decoder_class(engine: Any) -> str:
    return type(_decoder(engine)).__name__


def lora_phases(bench: Any, args: Any, config: Any, log: Any, on_cuda: bool) -> None:
    """Every LoRA figure, base first, on the engine ``bench`` drives (its pool has ``args.lora_slots`` slots)."""
    n = max(args.concurrency)
    root = Path(tempfile.mkdtemp(prefix="hanbot-lora-bench-"))
    t = time.perf_counter()
    names = [f"a{i}" for i in range(1, 5)]
    tenants = [f"a{i}" for i in range(1, args.lora_tenants + 1)]  # the first four are names' own
    params = 0
    for i, name in enumerate([*names, "promoted", *tenants[len(names) :]]):
        params = write_random_adapter(root / name, config, args.lora_rank, seed=10 + i)
    log("lora.adapter_parameters", params)
    log("lora.adapter_write_s", round(time.perf_counter() - t, 2))
    log("lora.slots", args.lora_slots)
    log("lora.rank", args.lora_rank)
    failed = 0

    async def run_all() -> None:
        nonlocal failed
        engine = bench.engine
        t = time.perf_counter()
        for name in names[: max(1, min(4, args.lora_slots))]:
            await engine.load_lora(name, str(root / name))
        log("lora.load_4_s", round(time.perf_counter() - t, 2))
        log("lora.decoder_class", _decoder_class(engine))
        base1 = await _single(bench, args.new, BASE_MODEL)
        one = await _single(bench, args.new, names[0])
        log("lora.base.single_stream_tok_s", round(base1, 2))
        log("lora.single_stream_tok_s", round(one, 2))
        log("lora.single_stream_ratio", round(one / base1, 3))
        base_n, f0 = await _streams(bench, n, args.new, [BASE_MODEL], "base")
        log(f"lora.base.concurrency.{n}", base_n)
        one_n, f1 = await _streams(bench, n, args.new, [names[0]], "one adapter")
        log(f"lora.concurrency.{n}", one_n)
        log(f"lora.concurrency.{n}.ratio", round(one_n["aggregate_tok_s"] / base_n["aggregate_tok_s"], 3))
        loaded = [name for name in names if name in engine._pool.loaded]
        mixed_n, f2 = await _streams(bench, n, args.new, [*loaded, BASE_MODEL], "mixed")
        log(f"lora.mixed.concurrency.{n}", {**mixed_n, "versions": [*loaded, "base"]})
        log(
            f"lora.mixed.concurrency.{n}.ratio",
            round(mixed_n["aggregate_tok_s"] / base_n["aggregate_tok_s"], 3),
        )
        f_tenants = await _tenants(bench, args, root, tenants, base_n, log) if tenants else 0
        inner = _decoder(engine)
        pool = getattr(inner, "lora_pool", None)
        log("lora.side_stream", bool(pool is not None and pool.side is not None))
        one_rank = (
            getattr(getattr(inner, "parallel", None), "world", 1) == 1
        )  # replays on rank 0 alone would hang
        if on_cuda and one_rank and hasattr(inner, "_lora_graphs"):
            key = engine._pool.resolve(names[0])
            try:
                log("lora.decode_step_ms", await engine._on_worker(lambda: lora_step_times(inner, key)))
            except Exception as exc:  # a diagnostic: the figures above stand without it
                log("lora.decode_step_ms_error", repr(exc)[:500])
        switch_s, f3 = await _switch_while_streaming(
            bench, args.new, root / "promoted", min(8, args.capacity)
        )
        log("lora.switch_s", round(switch_s, 3))
        log("lora.switch_streams", min(8, args.capacity))
        failed = f0 + f1 + f2 + f3 + f_tenants
        log("lora.failed_requests", failed)
        log("lora.decoder_class_after_switch", _decoder_class(engine))
        if on_cuda:
            log("peak_gpu_mem_gib", round(torch.cuda.max_memory_allocated() / (1 << 30), 2))
        await engine.aclose()

    asyncio.run(run_all())
