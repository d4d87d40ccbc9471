"""Where a decode step with adapters spends its time, on a 2-layer model at the 70B widths, bf16 and FP8: the device
time of every kernel of an eager decode step (base and with adapters), and the replay time of the decode step's CUDA
graphs (base and with adapters) for three ways of computing the adapters' x·A: a separate shrink kernel
(HANBOT_LORA_FOLD=0), the same on a side stream (HANBOT_LORA_OVERLAP=1), and folded into the base product's own
launch (the default: ``lora.LoraPool.fold_rows``); folded, also with the o and down expands as kernels of their own
(the default) against the opt-in HANBOT_LORA_NORM_FUSE=1, where they are fused into the residual add + RMSNorm after
them.

Batches: ``one`` (every row on one adapter) at 1, 16 and 64 rows, and ``mixed`` (rows spread over 4 adapters and
the base, as ``lora.mixed.concurrency.16`` of the GPU benchmark) at 16 and 64 rows. The summary lines
(``LORA_PROFILE …``) give per batch the device µs per step of the adapters' kernels (``_lora_*``; folded, the x·A
work is inside ``_skinny_gemm_kernel``/``_fp8_skinny_gemm_kernel``) and of the whole step, base and with adapters,
the kernel launches per step, and the graph step ms (``graph_step_ms``: separate shrink, ``graph_step_ms_fold``:
folded, ``graph_step_ms_fold_nofuse``: folded, the o and down expands not fused into the norms); the rows of
``trace`` give every kernel. The trace runs with the environment's HANBOT_LORA_FOLD (default on) and
HANBOT_LORA_NORM_FUSE (default off); the steps measure all four ways in one run.

GPU only; prints a table and writes ``lora-profile-<gpu>.json`` under ``--out``. It measures no target: it is the
diagnosis behind the LoRA figures of ``gpu-<setup>-lora.json`` (which kernels the adapters add and what each costs).

    python bench/lora_profile.py --out bench/results
    python bench/lora_profile.py --out bench/results --skip-trace --rows 1,16 --mixed-rows 16   # the A/B only
    HANBOT_LORA_FOLD=0 python bench/lora_profile.py --out bench/results --trace-only --name nofold
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ADAPTERS = ("a1", "a2", "a3", "a4")
SMOKE = {"smoke": False}  # --smoke: a tiny model on the CPU (the script's own checks, no figures)
MIXES: dict[str, tuple[str | None, ...]] = {"one": ("a1",), "mixed": (*ADAPTERS, None)}


def _config(layers: int) -> Any:
    from transformers import LlamaConfig

    if SMOKE["smoke"]:
        from tests.inference.test_fast_decoder import tiny_config

        return tiny_config()
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=layers,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def _decoder(fp8: bool, layers: int, capacity: int, cuda_graphs: bool) -> Any:
    """A 2-layer 70B-width decoder (random weights) with a 4-slot pool holding the 4 random rank-16 adapters."""
    from transformers import LlamaForCausalLM

    from bench.lora_bench import write_random_adapter
    from inference.fast.decoder import StaticSlotDecoder

    config = _config(layers)
    torch.manual_seed(0)
    with torch.device("cpu" if SMOKE["smoke"] else "cuda"):
        model = LlamaForCausalLM(config).to(torch.float32 if SMOKE["smoke"] else torch.bfloat16).eval()
    dec = StaticSlotDecoder(
        model,
        fp8=fp8,
        capacity=capacity,
        max_context=2048,
        kv_budget_bytes=4 << 30,
        lora_slots=len(ADAPTERS),
        lora_max_rank=16,
        cuda_graphs=cuda_graphs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(ADAPTERS):
            write_random_adapter(Path(tmp) / name, config, 16, seed=1 + i)
            dec.load_lora(name, str(Path(tmp) / name))
    return dec


def _admit(dec: Any, rows: int, loras: tuple[str | None, ...] | None) -> None:
    """``rows`` requests of 512 tokens, row i on ``loras[i % len]`` (None: every row on the base model)."""
    from bot.domain import GenerationParams
    from inference.decoder import SlotRequest

    params = GenerationParams(max_new_tokens=300, do_sample=False, repetition_penalty=1.0)
    prompt = tuple(range(10, 50)) if SMOKE["smoke"] else tuple(range(1000, 1512))
    dec.admit_many(
        [SlotRequest(s, prompt, params, lora=loras[s % len(loras)] if loras else None) for s in range(rows)]
    )


def kernel_trace(dec: Any, fp8: bool, rows: int, mix: str) -> list[dict[str, Any]]:
    """Device time of every kernel of 5 eager decode steps (no CUDA graphs), with the batch ``mix`` and with every
    row on the base: which kernels the adapters add and what each costs on the GPU itself."""
    from torch.profiler import ProfilerActivity, profile

    table: list[dict[str, Any]] = []
    activity = ProfilerActivity.CPU if SMOKE["smoke"] else ProfilerActivity.CUDA
    for lora in (True, False):
        _admit(dec, rows, MIXES[mix] if lora else None)
        for _ in range(3):
            dec.step()
        _sync()
        with profile(activities=[activity]) as prof:
            for _ in range(5):
                dec.step()
            _sync()
        for ev in prof.key_averages():
            total = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
            if SMOKE["smoke"]:
                total = ev.self_cpu_time_total
            if total <= 0:
                continue
            table.append(
                {
                    "fp8": fp8,
                    "rows": rows,
                    "mix": mix,
                    "lora": lora,
                    "kernel": ev.key[:90],
                    "calls_per_step": ev.count / 5,
                    "us_per_step": round(total / 5, 1),
                }
            )
        for s in range(rows):
            dec.release(s)
    for row in sorted(table, key=lambda r: (r["lora"], -r["us_per_step"])):
        print(json.dumps(row), flush=True)
    return table


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def trace_summary(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (fp8, rows, mix): device µs per step of the adapters' kernels and of the whole step, base and adapters."""
    keys = sorted({(r["fp8"], r["rows"], r["mix"]) for r in trace})
    out = []
    for fp8, rows, mix in keys:
        mine = [r for r in trace if (r["fp8"], r["rows"], r["mix"]) == (fp8, rows, mix)]
        lora = [r for r in mine if r["lora"]]
        kernels = {r["kernel"]: r["us_per_step"] for r in lora if r["kernel"].startswith("_lora_")}
        out.append(
            {
                "fp8": fp8,
                "rows": rows,
                "mix": mix,
                "lora_kernels_us": round(sum(kernels.values()), 1),
                "step_us_lora": round(sum(r["us_per_step"] for r in lora), 1),
                "step_us_base": round(sum(r["us_per_step"] for r in mine if not r["lora"]), 1),
                "launches_lora": round(sum(r["calls_per_step"] for r in lora), 1),
                "launches_base": round(sum(r["calls_per_step"] for r in mine if not r["lora"]), 1),
                "kernels": kernels,
            }
        )
    return out


def step_times(dec: Any, rows: int, mix: str) -> dict[str, float]:
    """Graph replay ms of one decode step of ``rows`` rows (CUDA events, median of 20): the base graph with every
    row on the base, the adapter graph with the batch ``mix``, both at 512 + 3 tokens of context."""
    out: dict[str, float] = {}
    for kind, graphs, loras in (("base", dec._graphs, None), ("lora", dec._lora_graphs, MIXES[mix])):
        graph = graphs.get(rows)
        if graph is None:
            continue
        _admit(dec, rows, loras)
        for _ in range(3):
            dec.step()
        samples = []
        for _ in range(20):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end))
        out[kind] = round(sorted(samples)[len(samples) // 2], 3)
        for s in range(rows):
            dec.release(s)
    return out


# (HANBOT_LORA_OVERLAP, HANBOT_LORA_FOLD, HANBOT_LORA_NORM_FUSE) of the graph-step A/B: the separate shrink, on a
# side stream, folded with the o and down expands on their own (the default), folded with them fused into the norms
STEP_MODES = ((False, False, True), (True, False, True), (False, True, False), (False, True, True))


def step_table(
    fp8: bool,
    overlap: bool,
    batches: list[tuple[int, str]],
    layers: int = 2,
    fold: bool = False,
    norm_fuse: bool = True,
) -> dict[str, Any]:
    """Graph replay ms of one decode step per batch, base and with adapters (``fold``: the shrink folded into the
    base products where a Triton skinny kernel serves them; ``norm_fuse``: the o and down expands fused into the
    residual add + RMSNorm after them)."""
    os.environ["HANBOT_LORA_OVERLAP"] = "1" if overlap else "0"
    os.environ["HANBOT_LORA_FOLD"] = "1" if fold else "0"
    os.environ["HANBOT_LORA_NORM_FUSE"] = "1" if norm_fuse else "0"
    capacity = max(rows for rows, _ in batches)
    dec = _decoder(fp8, layers, capacity, cuda_graphs=True)
    side = dec.lora_pool is not None and dec.lora_pool.side is not None
    folds = dec.lora_pool is not None and dec.lora_pool.fold
    fuses = dec.lora_pool is not None and dec.lora_pool.norm_fuse
    times = {f"{rows}-{mix}": step_times(dec, rows, mix) for rows, mix in batches}
    dec.close()
    del dec
    torch.cuda.empty_cache()
    result = {
        "fp8": fp8,
        "overlap": overlap,
        "side_stream": side,
        "fold": folds,
        "norm_fuse": fuses,
        "layers": layers,
        "step_ms": times,
    }
    print(json.dumps(result), flush=True)
    return result


def _graph_ms(
    steps: list[dict[str, Any]], fp8: bool, batch: str, fold: bool, norm_fuse: bool = True
) -> dict[str, float] | None:
    """The graph step ms of ``batch`` without the side stream, the shrink folded or not, the o and down expands
    fused into the norms or not."""
    return next(
        (
            st["step_ms"].get(batch)
            for st in steps
            if st["fp8"] == fp8
            and not st["overlap"]
            and st.get("fold", False) == fold
            and st.get("norm_fuse", True) == norm_fuse
        ),
        None,
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument(
        "--name", default="", help="suffix of the results file (lora-profile-<gpu>-<name>.json)"
    )
    parser.add_argument("--trace-only", action="store_true", help="only the per-kernel device times")
    parser.add_argument("--skip-trace", action="store_true", help="only the graph steps (the fold A/B)")
    parser.add_argument("--rows", default="1,16,64", help="batch sizes with every row on one adapter")
    parser.add_argument("--mixed-rows", default="16,64", help="batch sizes over 4 adapters and the base")
    parser.add_argument("--bf16-only", action="store_true")
    parser.add_argument(
        "--shrink-sums-from",
        type=int,
        default=None,
        help="lora_kernels.SHRINK_SUMS_FROM_ROWS for this run (where the split-K partials are summed)",
    )
    parser.add_argument(
        "--min-k-per",
        type=int,
        default=None,
        help="lora_kernels.MIN_K_PER for this run (the shrink's least K chunk: 128 gives K=8192 64 chunks)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny model on the CPU: checks the script only"
    )
    parser.add_argument(
        "--dot", default=None, help="lora_kernels.DOT_PRECISION for this run: ieee (the default) or tf32x3"
    )
    args = parser.parse_args()
    from inference.fast import lora_kernels

    if args.smoke:
        SMOKE["smoke"] = True
        args.skip_steps, args.bf16_only = True, True
    if args.shrink_sums_from is not None:
        lora_kernels.SHRINK_SUMS_FROM_ROWS = args.shrink_sums_from
    if args.min_k_per is not None:
        lora_kernels.MIN_K_PER = args.min_k_per
    if args.dot is not None:
        lora_kernels.DOT_PRECISION = args.dot
    batches = [(int(r), "one") for r in args.rows.split(",") if r] + [
        (int(r), "mixed") for r in args.mixed_rows.split(",") if r
    ]
    gpu = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    results: dict[str, Any] = {
        "gpu": gpu,
        "commit": _commit(),
        "shrink_sums_from_rows": lora_kernels.SHRINK_SUMS_FROM_ROWS,
        "min_k_per": lora_kernels.MIN_K_PER,
        "dot_precision": lora_kernels.DOT_PRECISION,
        "trace_fold": os.environ.get("HANBOT_LORA_FOLD", "1") != "0",
        "trace_norm_fuse": os.environ.get("HANBOT_LORA_NORM_FUSE", "0") == "1",
        "command": "python bench/lora_profile.py " + " ".join(sys.argv[1:]),
    }
    trace: list[dict[str, Any]] = []
    for fp8 in () if args.skip_trace else (False,) if args.bf16_only else (False, True):
        dec = _decoder(fp8, 2, max(r for r, _ in batches), cuda_graphs=False)
        for rows, mix in batches:
            trace += kernel_trace(dec, fp8, rows, mix)
        dec.close()
        del dec
        torch.cuda.empty_cache()
    results["summary"] = trace_summary(trace)
    results["trace"] = trace
    if not args.skip_steps and not args.trace_only:
        results["steps"] = [
            step_table(fp8, overlap, batches, fold=fold, norm_fuse=norm_fuse)
            for fp8 in ((False,) if args.bf16_only else (False, True))
            for overlap, fold, norm_fuse in STEP_MODES
        ]
    for s in results["summary"]:
        graph, graph_fold, graph_nofuse = (
            _graph_ms(results.get("steps", []), s["fp8"], f"{s['rows']}-{s['mix']}", fold, fuse)
            for fold, fuse in ((False, True), (True, True), (True, False))
        )
        print(
            f"LORA_PROFILE fp8={s['fp8']} rows={s['rows']} mix={s['mix']} lora_kernels_us={s['lora_kernels_us']} "
            f"eager_step_us base={s['step_us_base']} lora={s['step_us_lora']} graph_step_ms={graph} "
            f"graph_step_ms_fold={graph_fold} graph_step_ms_fold_nofuse={graph_nofuse} "
            f"launches base={s['launches_base']} lora={s['launches_lora']} "
            f"kernels={json.dumps(s['kernels'])}",
            flush=True,
        )
    for st in results.get("steps", []):
        for batch, ms in st["step_ms"].items():
            ratio = round(ms["base"] / ms["lora"], 3) if ms.get("base") and ms.get("lora") else None
            print(
                f"LORA_STEP fp8={st['fp8']} overlap={st['overlap']} fold={st['fold']} "
                f"norm_fuse={st.get('norm_fuse', True)} batch={batch} "
                f"base_ms={ms.get('base')} lora_ms={ms.get('lora')} base_over_lora={ratio}",
                flush=True,
            )
    tag = "h200" if "H200" in gpu else "h100" if "H100" in gpu else "smoke" if args.smoke else "gpu"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = f"lora-profile-{tag}{'-' + args.name if args.name else ''}.json"
    (Path(args.out) / name).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
