"""Matrix products of the decode step: cuBLAS or a Triton skinny GEMM, whichever is faster, measured once per shape.

Decode multiplies a few rows (the batch) by each weight matrix: the time is the time to stream the weights. At start,
for every weight shape and row class (1, up to 16, up to 32 rows) the plan times cuBLAS and each Triton
configuration on the model's own matrices and keeps the fastest. The choices are saved beside the kernel cache, so
a warm restart skips the measurement. More rows (prefill) always go to cuBLAS.

FP8 weights (``fp8.Fp8Weight``): up to 32 rows go to the Triton FP8 skinny kernel (the configuration measured by
``tune``, or a default), which reads e4m3 and dequantises in registers. More rows (prefill) go to
``torch._scaled_mm`` with the activations quantised per token (W8A8 on Hopper's FP8 tensor cores), or, where that
is unavailable or fails, to a row-chunked dequantisation and cuBLAS (``fp8_prefill``). On CPU an FP8 product is
``F.linear(x, w.dequantize(x.dtype))``, the reference the kernels are tested against.

``linear_folded``: the same Triton product with a second, small matrix in the same launch (``kernels.Tail``: the LoRA
pool's A stack, so a decode step with adapters needs no shrink kernel of its own, ``lora.py``). bf16 shapes where
cuBLAS won by less than FOLD_SLACK_S keep their fastest Triton config for it (``fold_choices``).
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
from inference.fast.fp8 import FP8_MAX, Fp8Weight, dequantize_rows

_log = logging.getLogger(__name__)

ROW_CLASSES = (1, 16, 32)
Choice = tuple[int, ...] | None  # a Triton config, or None for cuBLAS
Matrix = torch.Tensor | Fp8Weight
FP8_PREFILL_MODES = ("auto", "scaled_mm", "dequant")
DEQUANT_CHUNK_ROWS = 4096
# a folded product (``LinearPlan.linear_folded``) replaces cuBLAS + the adapters' shrink kernel (~4 µs on an H100 at
# one row, launch-bound): a Triton config at most this much slower than cuBLAS still gains
FOLD_SLACK_S = 4e-6


def _row_class(m: int) -> int:
    return 1 if m == 1 else 16 if m <= 16 else 32


def _dtype(w: Matrix) -> torch.dtype:
    return w.dtype


class LinearPlan:
    def __init__(
        self,
        device: torch.device,
        mode: str = "auto",
        cache_file: Path | None = None,
        fp8_prefill: str = "auto",
    ) -> None:
        if mode not in ("auto", "cublas", "triton"):
            raise ValueError(f"gemm mode {mode!r}: expected auto, cublas or triton")
        if fp8_prefill not in FP8_PREFILL_MODES:
            raise ValueError(f"fp8_prefill {fp8_prefill!r}: expected one of {FP8_PREFILL_MODES}")
        self.device = device
        self.mode = mode
        self.cache_file = cache_file
        self.choices: dict[tuple[int, int, int], Choice] = {}
        self.fp8_choices: dict[tuple[int, int, int], tuple[int, ...]] = {}
        # where cuBLAS won by less than FOLD_SLACK_S: the fastest Triton config, for products that fold the
        # adapters' shrink into the same launch (``linear_folded``: one launch less than cuBLAS + a shrink)
        self.fold_choices: dict[tuple[int, int, int], tuple[int, ...]] = {}
        self.timings: dict[str, dict[str, object]] = {}
        self._kernels = ops.triton_kernels(device) if device.type == "cuda" and mode != "cublas" else None
        # FP8 matrices have no cuBLAS path for few rows: the FP8 kernel serves them whatever ``mode`` says.
        self._fp8_kernels = ops.triton_kernels(device) if device.type == "cuda" else None
        # How FP8 prefill (more than 32 rows) runs: "scaled_mm" (W8A8, FP8 tensor cores) or "dequant".
        self.fp8_prefill = self._resolve_fp8_prefill(fp8_prefill)
        self.scaled_mm_pad_rows = (
            False  # set when _scaled_mm refused an unaligned row count and padding helped
        )

    def _resolve_fp8_prefill(self, requested: str) -> str:
        if self.device.type != "cuda":
            return "dequant"
        capable = hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(self.device) >= (9, 0)
        if requested == "auto":
            return "scaled_mm" if capable else "dequant"
        if requested == "scaled_mm" and not capable:
            _log.warning(
                "fp8_prefill=scaled_mm needs compute capability 9.0 and torch._scaled_mm: using dequant"
            )
            return "dequant"
        return requested

    def linear(self, x: torch.Tensor, w: Matrix) -> torch.Tensor:
        if isinstance(w, Fp8Weight):
            return self._linear_fp8(x, w)
        m = x.shape[0]
        if self._kernels is None or m > ROW_CLASSES[-1]:
            return F.linear(x, w)
        choice = self.choices.get((w.shape[0], w.shape[1], _row_class(m)))
        if choice is None:
            return F.linear(x, w)
        return self._kernels.skinny_linear(x, w, choice)  # type: ignore[no-any-return]

    def linear_folded(
        self, x: torch.Tensor, w: Matrix, tail: torch.Tensor, index: torch.Tensor, group: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x·wᵀ, x·tailᵀ in float32 [M, NT]) from one launch of a Triton skinny kernel (``kernels.Tail``: the
        adapters' shrink folded into the base product; ``tail`` [NT, K] contiguous, its rows in groups of ``group``
        per pool slot, a group no row's ``index`` names left unwritten). None where no Triton kernel serves this
        product (cuBLAS chosen, more than 32 rows, no kernels here): the caller runs its own shrink then."""
        m = x.shape[0]
        if m > ROW_CLASSES[-1]:
            return None
        if isinstance(w, Fp8Weight):
            kernels = self._fp8_kernels if w.device.type == "cuda" else None
            config = self._fp8_config(w, m) if kernels is not None else None
        else:
            kernels = self._kernels
            key = (w.shape[0], w.shape[1], _row_class(m))
            config = self.choices.get(key) or self.fold_choices.get(key)
        if kernels is None or config is None:
            return None
        out = torch.empty((m, tail.shape[0]), dtype=torch.float32, device=x.device)
        folded = kernels.Tail(tail, index, group, out)
        if isinstance(w, Fp8Weight):
            return kernels.fp8_skinny_linear(x, w.data, w.scale, config, folded), out
        return kernels.skinny_linear(x, w, config, folded), out

    # ---- FP8 ----------------------------------------------------------------------------------------------------

    def _fp8_config(self, w: Fp8Weight, m: int) -> tuple[int, ...]:
        assert self._fp8_kernels is not None
        n, k = w.shape
        return self.fp8_choices.get((n, k, _row_class(m)), self._fp8_kernels.FP8_DEFAULT_CONFIG)

    def _linear_fp8(self, x: torch.Tensor, w: Fp8Weight) -> torch.Tensor:
        if w.device.type != "cuda":
            return F.linear(x, w.dequantize(x.dtype))
        m = x.shape[0]
        if m <= ROW_CLASSES[-1] and self._fp8_kernels is not None:
            cfg = self._fp8_config(w, m)
            return self._fp8_kernels.fp8_skinny_linear(x, w.data, w.scale, cfg)  # type: ignore[no-any-return]
        if self.fp8_prefill == "scaled_mm" and x.dtype == torch.bfloat16 and _scaled_mm_shape_ok(w):
            try:
                return scaled_mm_linear(x, w, pad_rows=self.scaled_mm_pad_rows)
            except Exception as exc:
                if not self.scaled_mm_pad_rows and m % 16:
                    # a build may want aligned rows: retry once padded to 16; keep padding if that works
                    try:
                        y = scaled_mm_linear(x, w, pad_rows=True)
                    except Exception:
                        y = None
                    if y is not None:
                        self.scaled_mm_pad_rows = True
                        _log.warning("torch._scaled_mm needed rows padded to a multiple of 16 (%s)", exc)
                        return y
                # an unsupported build or shape: the dequantised product is always right
                _log.warning(
                    "torch._scaled_mm failed (%s): FP8 prefill falls back to dequantise + cuBLAS", exc
                )
                self.fp8_prefill = "dequant"
        return dequant_linear(x, w)

    def _run_fp8(self, x: torch.Tensor, w: Fp8Weight, cfg: tuple[int, ...]) -> torch.Tensor:
        assert self._fp8_kernels is not None
        return self._fp8_kernels.fp8_skinny_linear(x, w.data, w.scale, cfg)  # type: ignore[no-any-return]

    def _tune_fp8(self, name: str, mats: Sequence[Fp8Weight]) -> None:
        """Time every FP8 config per row class; a config whose result disagrees with the dequantised product is
        dropped, so a miscompiled config cannot win by being fast."""
        kernels = self._fp8_kernels
        assert kernels is not None
        n, k = mats[0].shape
        bytes_ = mats[0].nbytes()
        for rows in ROW_CLASSES:
            x = torch.randn((rows, k), dtype=torch.bfloat16, device=self.device)
            ref = dequant_linear(x, mats[0]).float()
            tol = 1e-2 * float(ref.abs().max()) + 1e-6
            best: tuple[int, ...] = kernels.FP8_DEFAULT_CONFIG
            best_t = float("inf")
            times: dict[str, float] = {}
            for cfg in kernels.FP8_GEMM_CONFIGS:
                label = "fp8_" + "x".join(map(str, cfg))
                try:
                    err = float((self._run_fp8(x, mats[0], cfg).float() - ref).abs().max())
                    if not err <= tol:
                        _log.warning(
                            "FP8 GEMM config %s on %s: max error %.3g > %.3g, skipped", cfg, name, err, tol
                        )
                        continue
                    t = self._time(x, cfg, mats)
                except Exception as exc:  # a config the compiler refuses here (resources): skip it
                    _log.warning("FP8 GEMM config %s failed on %s: %s", cfg, name, exc)
                    continue
                times[label] = round(bytes_ / t / 1e12, 3)
                if t < best_t:
                    best, best_t = cfg, t
            self.fp8_choices[(n, k, rows)] = best
            self.timings[f"{name}.{rows}"] = {
                "best": "fp8_" + "x".join(map(str, best)),
                "best_TBps": round(bytes_ / best_t / 1e12, 3) if best_t < float("inf") else 0.0,
                "configs_TBps": times,
            }

    def tune(self, groups: dict[str, Sequence[Matrix]]) -> None:
        """Choose per shape from ``groups`` (name → a few same-shape matrices, rotated to defeat the L2 cache).

        bf16 groups: cuBLAS or a Triton config; FP8 groups (``Fp8Weight``): one of the FP8 kernel's configs.
        """
        fp8_groups = {name: mats for name, mats in groups.items() if isinstance(mats[0], Fp8Weight)}
        dense_groups = {name: mats for name, mats in groups.items() if not isinstance(mats[0], Fp8Weight)}
        if (self._kernels is None or not dense_groups) and (self._fp8_kernels is None or not fp8_groups):
            return
        key = self._cache_key(groups)
        if self._load(key):
            return
        if self._fp8_kernels is not None:
            for name, fmats in fp8_groups.items():
                self._tune_fp8(name, [m for m in fmats if isinstance(m, Fp8Weight)])
        if self._kernels is None:
            dense_groups = {}
        configs: list[Choice] = [None, *self._kernels.GEMM_CONFIGS] if self._kernels is not None else []
        for name, dmats in dense_groups.items():
            mats = [m for m in dmats if isinstance(m, torch.Tensor)]
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
                    times["cublas" if cfg is None else "triton" + "x".join(map(str, cfg))] = t * 1e3
                    if t < best_t:
                        best, best_t = cfg, t
                self.choices[(n, k, rows)] = best
                fold = _fastest_triton(times)
                if (
                    best is None
                    and fold is not None
                    and fold[1] - times.get("cublas", 0.0) <= FOLD_SLACK_S * 1e3
                ):
                    self.fold_choices[(n, k, rows)] = fold[0]
                bytes_ = n * k * mats[0].element_size()
                self.timings[f"{name}.{rows}"] = {
                    "best": "cublas" if best is None else "triton" + "x".join(map(str, best)),
                    "best_TBps": round(bytes_ / best_t / 1e12, 3),
                    "cublas_TBps": round(bytes_ / (times["cublas"] / 1e3) / 1e12, 3)
                    if "cublas" in times
                    else 0.0,
                    "fold": "x".join(map(str, self.fold_choices[(n, k, rows)]))
                    if (n, k, rows) in self.fold_choices
                    else None,
                }
        _log.info("matrix-product plan: %s", self.timings)
        self._save(key)

    def _run(self, x: torch.Tensor, w: Matrix, cfg: Choice) -> torch.Tensor:
        if isinstance(w, Fp8Weight):
            assert cfg is not None
            return self._run_fp8(x, w, cfg)
        if cfg is None or self._kernels is None:
            return F.linear(x, w)
        return self._kernels.skinny_linear(x, w, cfg)  # type: ignore[no-any-return]

    def _time(self, x: torch.Tensor, cfg: Choice, mats: Sequence[Matrix]) -> float:
        def fn(w: Matrix) -> torch.Tensor:
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

    def _cache_key(self, groups: dict[str, Sequence[Matrix]]) -> str:
        shapes = sorted(f"{n}:{tuple(m[0].shape)}:{_dtype(m[0])}" for n, m in groups.items())
        key = f"{torch.cuda.get_device_name(self.device)}|{torch.__version__}|{self.mode}|{shapes}"
        if self._kernels is not None:
            key += (
                f"|bf16:{self._kernels.GEMM_CONFIGS}|fold:{FOLD_SLACK_S}"  # new configurations are measured
            )
        if self._fp8_kernels is not None and any(isinstance(m[0], Fp8Weight) for m in groups.values()):
            key += f"|fp8:{self._fp8_kernels.FP8_GEMM_CONFIGS}"
        return key

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
        self.fp8_choices = {
            tuple(json.loads(k)): tuple(v)  # type: ignore[misc]
            for k, v in data.get("fp8_choices", {}).items()
        }
        self.fold_choices = {
            tuple(json.loads(k)): tuple(v)  # type: ignore[misc]
            for k, v in data.get("fold_choices", {}).items()
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
            "fp8_choices": {json.dumps(list(k)): list(v) for k, v in self.fp8_choices.items()},
            "fold_choices": {json.dumps(list(k)): list(v) for k, v in self.fold_choices.items()},
            "timings": self.timings,
        }
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            self.cache_file.write_text(json.dumps(data, indent=1))
        except OSError as exc:
            _log.warning("could not save the matrix-product plan to %s: %s", self.cache_file, exc)


def _fastest_triton(times_ms: dict[str, float]) -> tuple[tuple[int, ...], float] | None:
    """(config, ms) of the fastest Triton config in a shape's timings (labels "triton16x512x4x4"), if any."""
    triton_times = {label: t for label, t in times_ms.items() if label.startswith("triton")}
    if not triton_times:
        return None
    label = min(triton_times, key=triton_times.__getitem__)
    return tuple(int(v) for v in label.removeprefix("triton").split("x")), triton_times[label]


def _scaled_mm_shape_ok(w: Fp8Weight) -> bool:
    n, k = w.shape
    return n % 16 == 0 and k % 16 == 0


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) absmax FP8 quantisation of activations: (e4m3 [M, K], float32 scales [M, 1]).

    On CUDA one fused kernel (``quant_kernels``, the same arithmetic); elsewhere these torch operations."""
    if x.is_cuda and x.dim() == 2 and ops.triton_kernels(x.device) is not None:
        from inference.fast.quant_kernels import quantize_rows

        return quantize_rows(x)
    xf = x.to(torch.float32, copy=True)  # divided in place below
    amax = xf.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    xq = xf.div_(scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return xq, scale


def scaled_mm_linear(x: torch.Tensor, w: Fp8Weight, pad_rows: bool = False) -> torch.Tensor:
    """W8A8: x quantised per token, one ``torch._scaled_mm`` with row-wise scales on both sides (Hopper FP8).

    ``pad_rows``: zero rows appended up to a multiple of 16 (dropped from the result), for builds that need it.
    """
    m = x.shape[0]
    if pad_rows and m % 16:
        x = F.pad(x, (0, 0, 0, 16 - m % 16))
    xq, sx = quantize_rows_fp8(x)
    n = w.shape[0]
    y = torch._scaled_mm(
        xq, w.data.t(), scale_a=sx, scale_b=w.scale.view(1, n), out_dtype=x.dtype, use_fast_accum=False
    )
    return y[:m] if y.shape[0] != m else y


def dequant_linear(x: torch.Tensor, w: Fp8Weight, chunk_rows: int = DEQUANT_CHUNK_ROWS) -> torch.Tensor:
    """x @ dequantize(w)^T, ``chunk_rows`` weight rows at a time (little scratch), same values as the CPU path."""
    n = w.shape[0]
    if n <= chunk_rows:
        return F.linear(x, dequantize_rows(w.data, w.scale, x.dtype))
    outs = [
        F.linear(x, dequantize_rows(w.data[r0 : r0 + chunk_rows], w.scale[r0 : r0 + chunk_rows], x.dtype))
        for r0 in range(0, n, chunk_rows)
    ]
    return torch.cat(outs, dim=1)
