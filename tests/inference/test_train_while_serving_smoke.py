"""bench/train_while_serving.py on the CPU: the tiny shape's FP8 engine through LocalEngine.generate, idle and then
beside bench/finetune_gpu.py's trainer stepping in its own process; the results file holds issue 11's figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_while_serving_writes_idle_beside_and_training_figures(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(REPO / "bench" / "train_while_serving.py"),
        "--shape",
        "tiny",
        "--device",
        "cpu",
    ]
    cmd += [
        "--new",
        "6",
        "--concurrency",
        "2",
        "--seq-len",
        "48",
        "--beside-steps",
        "1",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "train-while-serving.json").read_text())
    assert "errors" not in result, result.get("errors")
    assert result["decoder_class"] == "StaticSlotDecoder"
    assert "reserve_training_gib=50.0" in result["setup"]["engine"]
    for phase in ("idle", "beside"):
        assert result[phase]["single_stream_tok_s"] > 0
        assert result[phase]["concurrency"]["2"]["aggregate_tok_s"] > 0
        assert result[phase]["concurrency"]["2"]["max_running"] == 2
    assert result["ratio"]["concurrency"]["2"] > 0 and result["ratio"]["single_stream"] > 0
    train = result["train"]
    assert len(train["steps_alone"]) >= 2 and len(train["steps_beside"]) >= 1  # warm-up step 0 in neither
    assert train["step_s_alone"] > 0 and train["step_s_beside"] > 0
    # the training steps beside serving ran inside the serving window, the alone ones before it
    trainer = result["trainer"]
    assert trainer["status"] == "stopped" and trainer["exit_code"] == 0 and trainer["quant"] == "none"
    assert result["failed_requests"] == 0 and result["refused_for_maintenance"] == 0
    assert set(result["targets"]) == {
        "serving keeps >= 60% of its idle aggregate (2 conversations)",
        "no request refused for maintenance",
    }
    assert result["targets"]["no request refused for maintenance"].startswith("met")
    assert "bench/train_while_serving.py" in result["command"]
    assert (tmp_path / "train-while-serving-trainer.log").read_text().strip()
