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
