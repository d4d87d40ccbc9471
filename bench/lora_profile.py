"""Where a decode step with adapters spends its time, on a 2-layer model at the 70B widths, bf16 and FP8: the device
time of every kernel of an eager decode step (base and with adapters, 1 and 16 rows), and the replay time of the
decode step's CUDA graphs (base and with adapters; the shrink on a side stream or not).

GPU only; prints a table and writes ``lora-profile-<gpu>.json`` under ``--out``. It measures no target: it is the
diagnosis behind the LoRA figures of ``gpu-<setup>-lora.json`` (which kernels the adapters add and what each costs).

    python bench/lora_profile.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def step_table(fp8: bool, overlap: bool, layers: int = 2) -> dict[str, Any]:
    """Graph replay ms of one decode step at 1 and 16 rows, base and with every row on one adapter."""
    os.environ["HANBOT_LORA_OVERLAP"] = "1" if overlap else "0"
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.lora_bench import lora_step_times, write_random_adapter
    from inference.fast.decoder import StaticSlotDecoder

    config = LlamaConfig(
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
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    dec = StaticSlotDecoder(
        model, fp8=fp8, capacity=16, max_context=2048, kv_budget_bytes=4 << 30, lora_slots=4, lora_max_rank=16
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_random_adapter(Path(tmp) / "a", config, 16, seed=1)
        dec.load_adapter("a", str(Path(tmp) / "a"))
    times = lora_step_times(dec, "a", buckets=(1, 16))
    del dec, model
    torch.cuda.empty_cache()
    result = {"fp8": fp8, "overlap": overlap, "layers": layers, "step_ms": times}
    print(json.dumps(result), flush=True)
    return result


def kernel_trace(fp8: bool, rows: int, layers: int = 2) -> list[dict[str, Any]]:
    """Device time of every kernel of a few eager decode steps (no CUDA graphs) of a 2-layer model at the 70B
    widths, every row on one adapter: which kernels the adapters add and what each costs on the GPU itself."""
    os.environ["HANBOT_LORA_OVERLAP"] = "0"
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.lora_bench import write_random_adapter
    from bot.domain import GenerationParams
    from inference.decoder import SlotRequest
    from inference.fast.decoder import StaticSlotDecoder

    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=layers,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    dec = StaticSlotDecoder(
        model,
        fp8=fp8,
        capacity=16,
        max_context=2048,
        kv_budget_bytes=4 << 30,
        lora_slots=4,
        lora_max_rank=16,
        cuda_graphs=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_random_adapter(Path(tmp) / "a", config, 16, seed=1)
        dec.load_adapter("a", str(Path(tmp) / "a"))
    params = GenerationParams(max_new_tokens=300, do_sample=False, repetition_penalty=1.0)
    table: list[dict[str, Any]] = []
    for lora in ("a", None):
        dec.admit_many([SlotRequest(s, tuple(range(1000, 1512)), params, lora=lora) for s in range(rows)])
        for _ in range(3):
            dec.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                dec.step()
            torch.cuda.synchronize()
        for ev in prof.key_averages():
            if ev.device_type.name != "CUDA" and getattr(ev, "self_device_time_total", 0) == 0:
                continue
            total = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
            if total <= 0:
                continue
            table.append(
                {
                    "fp8": fp8,
                    "rows": rows,
                    "lora": lora is not None,
                    "kernel": ev.key[:90],
                    "calls_per_step": ev.count / 5,
                    "us_per_step": round(total / 5, 1),
                }
            )
        for s in range(rows):
            dec.release(s)
    del dec, model
    torch.cuda.empty_cache()
    for row in sorted(table, key=lambda r: (r["lora"], -r["us_per_step"])):
        print(json.dumps(row), flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--trace-only", action="store_true", help="only the per-kernel device times")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name(0)
    results: dict[str, Any] = {"gpu": gpu}
    results["trace"] = [r for fp8 in (False, True) for rows in (1, 16) for r in kernel_trace(fp8, rows)]
    if not args.skip_steps and not args.trace_only:
        results["steps"] = [step_table(fp8, overlap) for fp8 in (False, True) for overlap in (True, False)]
    tag = "h200" if "H200" in gpu else "h100" if "H100" in gpu else "gpu"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"lora-profile-{tag}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
