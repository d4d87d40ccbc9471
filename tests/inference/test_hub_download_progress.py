"""A first start on a hub model: the download from a loopback hub (``HF_ENDPOINT``) serving the demo model's files
and the loading that follows show a bar and log status lines with files, bytes and time, in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.inference.fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from bot.settings import ModelSettings
from inference.loading import load_model
loaded = load_model(ModelSettings(name_or_path="hanbot-tests/demo", dtype="float32", device_map=None,
                                  progress_bar="on"))
print("loaded", loaded.name, sum(p.numel() for p in loaded.model.parameters()))
"""


def test_download_from_the_hub_then_loading_show_progress(tmp_path: Path, demo_model_dir: Path) -> None:
    with FakeHub("hanbot-tests/demo", demo_model_dir) as hub:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")
        }
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HOME=str(tmp_path / "hf"),
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONPATH=str(REPO),
        )
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, timeout=300
        )
        downloaded = hub.downloaded()
    stdout, stderr = done.stdout.decode(), done.stderr.decode()  # bytes: a bar's "\r" stays a "\r"

    assert done.returncode == 0, stderr[-3000:]
    assert stdout.startswith("loaded hanbot-tests/demo ")
    weights = [f for f in hub.files if f.endswith(".safetensors")]
    assert weights and set(weights) <= set(downloaded), downloaded
    assert len(downloaded) == len(set(downloaded)), "each file once"
    size = sum(hub.files[f].stat().st_size for f in hub.files if not f.startswith("."))
    logged = [
        line.split(": ", 1)[1] for line in stderr.splitlines() if line.startswith("inference.load_progress")
    ]
    download = [line for line in logged if line.startswith("model download:")]
    assert download and re.fullmatch(
        r"model download: (\d+)/\1 files, [\d.]+/[\d.]+ GB \(100%\), [\d.]+ MB/s, done in [\dms]+",
        download[-1],
    ), download
    assert any(line.startswith("model loading:") and "(100%)" in line for line in logged), logged
    bars = [part for part in re.split(r"[\r\n]", stderr) if part.startswith("[")]
    assert any(bar.startswith("[" + "#" * 24 + "] model download: ") for bar in bars)
    assert any(bar.startswith("[" + "#" * 24 + "] model loading: ") for bar in bars)
    assert size > 0
