"""bench/gpu_70b.py's engine-driven path, run on the CPU with a 2-layer model of Llama-3's vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_engine_driven_benchmark_writes_the_issue_keys(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "bench" / "gpu_70b.py"), "--shape", "tiny", "--device", "cpu"]
    cmd += [
        "--no-cold",
        "--new",
        "4",
        "--concurrency",
        "1,2",
        "--ttft-prompts",
        "16,40",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-tiny-cpu-engine.json").read_text())
    assert "errors" not in result, result.get("errors")
    assert result["setup"]["mechanism"].startswith("LocalEngine (static decoder) via Engine.generate")
    assert result["setup"]["decoder_class"] == "StaticSlotDecoder"
    assert result["single_stream_tok_s"] > 0
    assert set(result["ttft_s"]) == {"16", "40"}
    for n in ("1", "2"):
        assert result["concurrency"][n]["aggregate_tok_s"] > 0
        assert result["concurrency"][n]["p95_ttft_s"] >= result["concurrency"][n]["p50_ttft_s"]
    assert result["concurrency"]["2"]["max_running"] == 2
    assert result["warm_start_s"] > 0


@pytest.mark.slow
def test_lora_mode_writes_the_lora_keys(tmp_path: Path) -> None:
    """--lora: random adapters on every adapted module through LocalEngine.load_lora, base in the same run."""
    cmd = [sys.executable, str(REPO / "bench" / "gpu_70b.py"), "--shape", "tiny", "--device", "cpu", "--lora"]
    cmd += ["--new", "6", "--concurrency", "6", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-tiny-cpu-lora.json").read_text())
    assert "errors" not in result, result.get("errors")
    lora = result["lora"]
    assert lora["decoder_class"] == lora["decoder_class_after_switch"] == "StaticSlotDecoder"
    assert lora["single_stream_tok_s"] > 0 and lora["single_stream_ratio"] > 0
    for key in ("concurrency", "mixed"):
        figures = lora[key]["6"] if key == "concurrency" else lora[key]["concurrency"]["6"]
        assert figures["aggregate_tok_s"] > 0 and figures["ratio"] > 0 and figures["failed"] == 0
    assert lora["mixed"]["concurrency"]["6"]["versions"] == ["a1", "a2", "a3", "a4", "base"]
    assert lora["switch_s"] > 0 and lora["failed_requests"] == 0
    assert lora["adapter_parameters"] > 0
    assert "bench/gpu_70b.py" in result["command"] and "--lora" in result["command"]


def test_fp8_weights_built_layer_by_layer_equal_those_from_the_bf16_model() -> None:
    """bench/gpu_70b.py --fp8 draws each layer's random weights and quantises it before drawing the next (so the
    70B never sits whole in bf16 on the GPU); the FP8 weights must be the ones the decoder builds from
    build_70b's whole model, tensor for tensor."""
    import torch

    from bench import gpu_70b
    from inference.fast.decoder import decoder_weights
    from inference.fast.parallel import SingleProcess

    model, _ = gpu_70b.build_70b(None, "tiny", "cpu")
    from_model = decoder_weights(model, fp8=True, parallel=SingleProcess())
    by_layer = gpu_70b.fp8_weights_by_layer(gpu_70b.config_for("tiny"), "cpu")

    def tensors(w):  # every tensor the decoder reads, FP8 bytes and scales included
        out = [w.embed, w.norm, w.inv_freq]
        out += [t for lw in w.layers for t in (lw.input_norm, lw.post_norm)]
        for m in w.matrices():
            out += [m.data.view(torch.uint8), m.scale]  # FP8 matrices (Fp8Weight)
        return out

    assert from_model.spec == by_layer.spec
    pairs = list(zip(tensors(from_model), tensors(by_layer), strict=True))
    assert len(pairs) == 3 + 2 * 2 + 2 * (4 * 2 + 1)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.slow
def test_lora_tenants_spread_conversations_over_that_many_adapters(tmp_path: Path) -> None:
    """--lora-tenants 8 (issue 19): the pool gets 8 slots and N conversations run over 8 tenants' adapters at once,
    no base, beside the LoRA mode's other figures."""
    cmd = [sys.executable, str(REPO / "bench" / "gpu_70b.py"), "--shape", "tiny", "--device", "cpu", "--lora"]
    cmd += [
        "--lora-tenants",
        "8",
        "--new",
        "4",
        "--concurrency",
        "8",
        "--setup",
        "tenants",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-tenants.json").read_text())
    assert "errors" not in result, result.get("errors")
    lora = result["lora"]
    assert lora["slots"] == 8
    tenants = lora["mixed8"]["concurrency"]["8"]
    assert tenants["versions"] == [f"a{i}" for i in range(1, 9)]
    assert tenants["aggregate_tok_s"] > 0 and tenants["ratio"] > 0 and tenants["failed"] == 0
    assert tenants["max_running"] == 8  # all eight tenants' conversations decoded together
    assert lora["mixed"]["concurrency"]["8"]["versions"] == ["a1", "a2", "a3", "a4", "base"]
    assert lora["failed_requests"] == 0
    assert "--lora-tenants 8" in result["command"]
