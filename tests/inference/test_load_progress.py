"""Progress of the model's download and loading: the demo model loaded through the real from_pretrained path shows
a bar and logs a status line (tensors, files, bytes, time); the counters themselves on a real file copy."""

from __future__ import annotations

import io
import logging
import re
import shutil
from pathlib import Path

import pytest

from bot.settings import ModelSettings
from inference.load_progress import LoadProgress, checkpoint_files, wants_bar
from inference.loading import load_model


def test_loading_the_demo_model_draws_a_bar_and_logs_a_status_line(
    demo_settings: ModelSettings, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inference.load_progress")

    loaded = load_model(demo_settings.model_copy(update={"progress_bar": "on"}))

    assert not loaded.model.training
    tensors = len(loaded.model.state_dict())
    files = checkpoint_files(Path(demo_settings.name_or_path))
    size = sum(f.stat().st_size for f in files)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model loading:")]
    match = re.fullmatch(
        r"model loading: (\d+)/(\d+) tensors, (\d+) files, ~([\d.]+)/([\d.]+) GB \(100%\), done in [\dms]+",
        line,
    )
    assert match, line
    done, total, n_files = int(match[1]), int(match[2]), int(match[3])
    assert done == total and 0 < total <= tensors and n_files == len(files) >= 1
    assert float(match[5]) == pytest.approx(size / 1e9, abs=1e-3)
    err = capsys.readouterr().err
    bars = [part for part in err.split("\r") if part.startswith("[")]
    assert bars and bars[-1].startswith("[" + "#" * 24 + "] model loading: ")


def test_no_bar_unless_asked_or_on_a_terminal(
    demo_settings: ModelSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    load_model(demo_settings.model_copy(update={"progress_bar": "auto"}))  # pytest's stderr is no terminal
    # no bar; the status line may still reach stderr through a log handler another test left on it
    assert "] model loading" not in capsys.readouterr().err
    assert wants_bar("on") and not wants_bar("off") and not wants_bar("auto", io.StringIO())


def test_download_counters_on_a_real_copy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Files copied in chunks, as a download writes them: bytes, files, rate and time left add up."""
    caplog.set_level(logging.INFO, logger="inference.load_progress")
    sources = []
    for n, size in enumerate((300_000, 700_000, 1_000_000)):
        source = tmp_path / f"model-{n}.safetensors"
        source.write_bytes(bytes([n]) * size)
        sources.append(source)
    now = [0.0]
    stream = io.StringIO()
    progress = LoadProgress(
        "download",
        total_bytes=2_000_000,
        total_files=3,
        bar=True,
        stream=stream,
        log_interval_s=5,
        clock=lambda: now[0],
    )
    progress.already_there(sources[0].stat().st_size)  # in the cache
    for source in sources[1:]:
        with source.open("rb") as read, (tmp_path / f"copy-{source.name}").open("wb") as write:
            while chunk := read.read(100_000):
                write.write(chunk)
                now[0] += 1.0  # a chunk a second: 0.1 MB/s
                progress.add_bytes(len(chunk))
        progress.file_done()
        shutil.copystat(source, tmp_path / f"copy-{source.name}")
    progress.finish()

    assert (progress.done_files, progress.done_bytes) == (3, 2_000_000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [  # every 5 s, and at the end
        "model download: 1/3 files, 0.001/0.002 GB (40%), 0.1 MB/s, about 12s left",
        "model download: 2/3 files, 0.001/0.002 GB (65%), 0.1 MB/s, about 7s left",
        "model download: 2/3 files, 0.002/0.002 GB (90%), 0.1 MB/s, about 2s left",
        "model download: 3/3 files, 0.002/0.002 GB (100%), 0.1 MB/s, done in 17s",
    ]
    assert "\r[" + "#" * 24 + "] model download: 3/3 files, 0.002/0.002 GB (100%)" in stream.getvalue()
    now[0] = 0.0
    mid = LoadProgress("download", total_bytes=1000, total_files=2, clock=lambda: now[0])
    now[0] = 10.0
    mid.add_bytes(250)
    assert mid.seconds_left() == pytest.approx(30.0)
