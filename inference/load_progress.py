"""Progress of the model's download and loading: a bar on the terminal and a status line in the logs.

A 70B checkpoint is 141 GB in 30 files: its download takes minutes to hours and its loading minutes, and without a
word people restart a bot that is working. ``LoadProgress`` counts files and bytes, draws one bar on stderr (when it
is a terminal, or when asked) and logs a status line every ``LOG_INTERVAL_S`` seconds and at the end::

    model download: 12/30 files, 56.1/141.0 GB (40%), 210.3 MB/s, about 6m44s left
    model loading: 150/291 tensors, 8 files, ~72.7/141.0 GB (52%), about 1m10s left

The download goes file by file through ``huggingface_hub.hf_hub_download`` with a ``tqdm_class`` that reports the
bytes; the loading counts the tensors ``from_pretrained`` materialises, through transformers' ``set_tqdm_hook`` (its
"Loading weights" bar), bytes being the share of the checkpoint's size.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

_log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0
BAR_INTERVAL_S = 0.2
BAR_WIDTH = 24
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja")

Phase = Literal["download", "loading"]


class LoadProgress:
    """One phase's counters (files, bytes, or tensors), its bar and its log lines. Thread-safe: downloads report
    from worker threads."""

    def __init__(
        self,
        phase: Phase,
        *,
        total_bytes: int,
        total_files: int,
        total_units: int | None = None,
        bar: bool = False,
        stream: TextIO | None = None,
        log_interval_s: float = LOG_INTERVAL_S,
        clock: Any = time.monotonic,
    ) -> None:
        self.phase = phase
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.total_units = total_units  # loading: tensors
        self.done_bytes = 0
        self.done_files = 0
        self.done_units = 0
        self._skipped_bytes = 0  # already there when the phase started (cached files): not part of the rate
        self._bar = bar
        self._stream = stream or sys.stderr
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._started = clock()
        self._logged = self._started
        self._drawn = 0.0
        self._bar_open = False  # the bar's line has no newline yet
        self._lock = threading.Lock()

    # counting

    def already_there(self, size: int) -> None:
        """A file that needs no work (in the cache already)."""
        with self._lock:
            self.done_files += 1
            self.done_bytes += size
            self._skipped_bytes += size
        self._show()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.done_bytes += n
        self._show()

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1
        self._show()

    def add_units(self, n: int = 1) -> None:
        with self._lock:
            self.done_units += n
            if self.total_units:
                self.done_bytes = round(self.total_bytes * min(1.0, self.done_units / self.total_units))
        self._show()

    def finish(self) -> None:
        """The bar's final state, and the last status line (always logged)."""
        self._draw()
        self._log()

    # what is shown

    @property
    def fraction(self) -> float:
        if self.total_units:
            return min(1.0, self.done_units / self.total_units)
        if self.total_bytes:
            return min(1.0, self.done_bytes / self.total_bytes)
        return min(1.0, self.done_files / self.total_files) if self.total_files else 0.0

    def seconds_left(self) -> float | None:
        elapsed = self._clock() - self._started
        fraction = self.fraction
        if self.phase == "download" and self.total_bytes:
            moved = self.done_bytes - self._skipped_bytes
            left = self.total_bytes - self.done_bytes
            return None if moved <= 0 or elapsed <= 0 else left / (moved / elapsed)
        return None if fraction <= 0 or elapsed <= 0 else elapsed * (1 - fraction) / fraction

    def status(self) -> str:
        """The status line (also the bar's text)."""
        percent = round(100 * self.fraction)
        size = f"{_gb(self.done_bytes)}/{_gb(self.total_bytes)} GB ({percent}%)"
        if self.phase == "download":
            parts = [f"{self.done_files}/{self.total_files} files", size]
            elapsed = self._clock() - self._started
            moved = self.done_bytes - self._skipped_bytes
            if elapsed > 0 and moved > 0:
                parts.append(f"{moved / elapsed / 1e6:.1f} MB/s")
        else:
            tensors = f"{self.done_units}/{self.total_units} tensors" if self.total_units else "starting"
            parts = [tensors, f"{self.total_files} files", "~" + size]
        left = self.seconds_left()
        if left is not None and self.fraction < 1:
            parts.append(f"about {_duration(left)} left")
        elif self.fraction >= 1:
            parts.append(f"done in {_duration(self._clock() - self._started)}")
        return f"model {self.phase}: " + ", ".join(parts)

    def _show(self) -> None:
        now = self._clock()
        if now - self._logged >= self._log_interval_s:
            self._log()
        if now - self._drawn >= BAR_INTERVAL_S:
            self._draw()

    def _log(self) -> None:
        """The status line; a bar on the same terminal gets its newline first, so the two never share a line."""
        self._logged = self._clock()
        if self._bar_open:
            self._stream.write("\n")
            self._stream.flush()
            self._bar_open = False
        _log.info("%s", self.status())

    def _draw(self) -> None:
        if not self._bar:
            return
        self._drawn = self._clock()
        filled = round(BAR_WIDTH * self.fraction)
        line = f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self.status()}"
        self._stream.write(line.ljust(100))
        self._stream.flush()
        self._bar_open = True


def wants_bar(setting: str, stream: TextIO | None = None) -> bool:
    """``model.progress_bar``: "on", "off", or "auto" (a bar when stderr is a terminal)."""
    if setting in ("on", "off"):
        return setting == "on"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


# download


def download_files(
    name: str,
    revision: str | None,
    *,
    bar: bool,
    patterns: Sequence[str] = DOWNLOAD_PATTERNS,
    timeout_s: float = 10.0,
) -> Path:
    """The model's files into the hub cache, one by one with progress; returns the snapshot folder."""
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache

    info = HfApi().model_info(name, revision=revision, files_metadata=True, timeout=timeout_s)
    wanted = [
        (s.rfilename, int(s.size or 0))
        for s in info.siblings or []
        if any(fnmatch.fnmatch(s.rfilename, p) for p in patterns)
    ]
    progress = LoadProgress(
        "download", total_bytes=sum(size for _, size in wanted), total_files=len(wanted), bar=bar
    )
    commit = info.sha or revision
    folder: Path | None = None
    for filename, size in wanted:
        cached = try_to_load_from_cache(name, filename, revision=commit)
        if isinstance(cached, str):
            progress.already_there(size)
            folder = folder or _snapshot_root(Path(cached), filename)
            continue
        path = hf_hub_download(name, filename, revision=commit, tqdm_class=_bytes_reporter(progress))  # type: ignore[arg-type]
        progress.file_done()
        folder = folder or _snapshot_root(Path(path), filename)
    progress.finish()
    if folder is None:
        raise FileNotFoundError(f"{name}: no model files on the hub (looked for {', '.join(patterns)})")
    return folder


def _snapshot_root(path: Path, filename: str) -> Path:
    for _ in Path(filename).parts:
        path = path.parent
    return path


def _bytes_reporter(progress: LoadProgress) -> type:
    """A class huggingface_hub builds per file instead of its tqdm bar: it hands the bytes to ``progress``."""

    class _Bytes:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.n = int(kwargs.get("initial") or 0)
            self.total = kwargs.get("total")
            if self.n:
                progress.add_bytes(self.n)

        def __enter__(self) -> _Bytes:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: float | None = 1) -> None:
            self.n += int(n or 0)
            progress.add_bytes(int(n or 0))

        def __getattr__(self, name: str) -> Any:  # refresh, close, set_postfix_str...: nothing to do
            return lambda *args, **kwargs: None

    return _Bytes


# loading


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


@contextlib.contextmanager
def loading_progress(files: Sequence[Path], *, bar: bool) -> Iterator[LoadProgress]:
    """Inside: transformers' weight-loading bars report to one ``LoadProgress`` (tensors, and the share of bytes)."""
    from transformers.utils import logging as hf_logging

    progress = LoadProgress(
        "loading", total_bytes=sum(f.stat().st_size for f in files), total_files=len(files), bar=bar
    )

    def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        iterable = args[0] if args else kwargs.get("iterable")
        total = kwargs.get("total")
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        if total:
            progress.total_units = (progress.total_units or 0) + int(total)
        return _CountingBar(iterable, progress)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield progress
    finally:
        hf_logging.set_tqdm_hook(previous)
    progress.finish()


class _CountingBar:
    """Stands in for transformers' tqdm bar: iterates (or is updated) and counts into ``progress``."""

    def __init__(self, iterable: Iterable[Any] | None, progress: LoadProgress) -> None:
        self._iterable = iterable
        self._progress = progress

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable or ():
            yield item
            self._progress.add_units()

    def __len__(self) -> int:
        return len(self._iterable) if hasattr(self._iterable, "__len__") else 0  # type: ignore[arg-type]

    def __enter__(self) -> _CountingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        self._progress.add_units(int(n or 0))

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}" if n >= 1e8 else f"{n / 1e9:.3f}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
