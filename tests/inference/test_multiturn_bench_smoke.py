"""bench/multiturn.py on the CPU: the tiny shape with Llama-3's vocabulary through LocalEngine.generate, with prefix
reuse and then without on the same engine; the results file holds the issue's keys per turn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = {"prompt_tokens", "p50_ttft_s", "p95_ttft_s", "aggregate_tok_s", "prefix_hit_tokens"}


@pytest.mark.slow
def test_multiturn_benchmark_writes_each_turn(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "bench" / "multiturn.py"), "--shape", "tiny", "--device", "cpu"]
    cmd += ["--channels", "2", "--turns", "3", "--first", "60", "--follow", "8", "--reply", "8"]
    cmd += ["--compare-no-reuse", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "multiturn-tiny-cpu-fp32.json").read_text())
    assert "bench/multiturn.py" in result["command"]
    assert result["decoder"]["class"] == "StaticSlotDecoder"
    for key in ("reuse", "no_reuse"):
        turns = [result[key][f"turn{t}"] for t in (1, 2, 3)]
        for turn in turns:
            assert KEYS <= set(turn), turn
            assert turn["aggregate_tok_s"] > 0
            assert turn["p95_ttft_s"] >= turn["p50_ttft_s"] > 0
        # each prompt is the whole conversation: 8 more message tokens, 8 reply tokens and the turns' headers
        assert turns[0]["prompt_tokens"] < turns[1]["prompt_tokens"] < turns[2]["prompt_tokens"]
        assert turns[0]["prefix_hit_tokens"] == 0
    # with reuse, each channel's later turns start from the KV blocks its earlier turns left (64-token blocks)
    assert [result["reuse"][f"turn{t}"]["prefix_hit_tokens"] for t in (2, 3)] == [2 * 64, 2 * 64]
    assert [result["no_reuse"][f"turn{t}"]["prefix_hit_tokens"] for t in (2, 3)] == [0, 0]
