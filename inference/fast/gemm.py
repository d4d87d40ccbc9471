"""Matrix products of the decode step: cuBLAS or a Triton skinny GEMM, whichever is faster, measured once per shape.

Decode multiplies a few rows (the batch) by each weight matrix: the time is the time to stream the weights. At start,
for every weight shape and row class (1, up to 16, up to 32 rows) the plan times cuBLAS and each Triton
configuration on the model's own matrices and keeps the fastest. The choices are saved beside the kernel cache, so
a warm restart skips the measurement. More rows (prefill) always go to cuBLAS.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from inference.fast import ops

_log = logging.getLogger(__name__)

ROW_CLASSES = (1, 16, 32)
Choice = tuple[int, int, int, int] | None  # a Triton config, or None for cuBLAS


def _row_class(m: int) -> int:
    return 1 if m == 1 else 16 if m <= 16 else 32


class LinearPlan:
    def __init__(self, device: torch.device, mode: str = "auto", cache_file: Path | None = None) -> None:
        if mode not in ("auto", "cublas", "triton"):
            raise ValueError(f"gemm mode {mode!r}: expected auto, cublas or triton")
        self.device = device
        self.mode = mode
        self.cache_file = cache_file
        self.choices: dict[tuple[int, int, int], Choice] = {}
        self.timings: dict[str, dict[str, object]] = {}
        self._kernels = ops.triton_kernels(device) if device.type == "cuda" and mode != "cublas" else None

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        if self._kernels is None or m > ROW_CLASSES[-1]:
            return F.linear(x, w)
        choice = self.choices.get((w.shape[0], w.shape[1], _row_class(m)))
        if choice is None:
            return F.linear(x, w)
        return self._kernels.skinny_linear(x, w, choice)  # type: ignore[no-any-return]

    def tune(self, groups: dict[str, Sequence[torch.Tensor]]) -> None:
        """Choose per shape from ``groups`` (name → a few same-shape matrices, rotated to defeat the L2 cache)."""
        if self._kernels is None:
            return
        key = self._cache_key(groups)
        if self._load(key):
            return
        configs: list[Choice] = [None, *self._kernels.GEMM_CONFIGS]
        for name, mats in groups.items():
            n, k = mats[0].shape
            for rows in ROW_CLASSES:
                x = torch.randn((rows, k), dtype=mats[0].dtype, device=self.device)
                best: Choice = None
                best_t = float("inf")
                times: dict[str, float] = {}
                for cfg in configs:
                    if self.mode == "triton" and cfg is None:
                        continue
                    try:
                        t = self._time(x, cfg, mats)
                    except Exception as exc:  # a config the compiler refuses here (resources): skip it
                        _log.warning("skinny GEMM config %s failed on %s: %s", cfg, name, exc)
                        continue
                    times["cublas" if cfg is None else "triton" + "x".join(map(str, cfg))] = round(t * 1e3, 4)
                    if t < best_t:
                        best, best_t = cfg, t
                self.choices[(n, k, rows)] = best
                bytes_ = n * k * mats[0].element_size()
                self.timings[f"{name}.{rows}"] = {
                    "best": "cublas" if best is None else "triton" + "x".join(map(str, best)),
                    "best_TBps": round(bytes_ / best_t / 1e12, 3),
                    "cublas_TBps": round(bytes_ / (times["cublas"] / 1e3) / 1e12, 3)
                    if "cublas" in times
                    else 0.0,
                }
        _log.info("matrix-product plan: %s", self.timings)
        self._save(key)

    def _run(self, x: torch.Tensor, w: torch.Tensor, cfg: Choice) -> torch.Tensor:
        if cfg is None or self._kernels is None:
            return F.linear(x, w)
        return self._kernels.skinny_linear(x, w, cfg)  # type: ignore[no-any-return]

    def _time(self, x: torch.Tensor, cfg: Choice, mats: Sequence[torch.Tensor]) -> float:
        def fn(w: torch.Tensor) -> torch.Tensor:
            return self._run(x, w, cfg)

        for w in mats:
            fn(w)
        torch.cuda.synchronize(self.device)
        samples = []
        for _ in range(5):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(4):
                for w in mats:
                    fn(w)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / (4 * len(mats)))
        return statistics.median(samples)

    def _cache_key(self, groups: dict[str, Sequence[torch.Tensor]]) -> str:
        shapes = sorted(f"{n}:{tuple(m[0].shape)}:{m[0].dtype}" for n, m in groups.items())
        return f"{torch.cuda.get_device_name(self.device)}|{torch.__version__}|{self.mode}|{shapes}"

    def _load(self, key: str) -> bool:
        if self.cache_file is None or not self.cache_file.is_file():
            return False
        try:
            data = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            return False
        if data.get("key") != key:
            return False
        self.choices = {
            tuple(json.loads(k)): (tuple(v) if v is not None else None)  # type: ignore[misc]
            for k, v in data["choices"].items()
        }
        self.timings = data.get("timings", {})
        _log.info("matrix-product plan loaded from %s", self.cache_file)
        return True

    def _save(self, key: str) -> None:
        if self.cache_file is None:
            return
        data = {
            "key": key,
            "choices": {
                json.dumps(list(k)): (list(v) if v is not None else None) for k, v in self.choices.items()
            },
            "timings": self.timings,
        }
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            self.cache_file.write_text(json.dumps(data, indent=1))
        except OSError as exc:
            _log.warning("could not save the matrix-product plan to %s: %s", self.cache_file, exc)
