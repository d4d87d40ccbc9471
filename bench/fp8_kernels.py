"""GPU micro-benchmark of the FP8 matrix products (inference.fast): decode kernel bandwidth and prefill TFLOP/s.

For each Llama-3-70B weight shape (qkv, o, gate_up, down, lm_head) and 1/16/32 rows: achieved TB/s of every FP8
skinny-kernel config (bytes = FP8 matrix + row scales) against cuBLAS on the bf16 matrix (bytes = bf16 matrix), and
the fraction of the measured copy bandwidth (the practical floor). For prefill (512 and 2048 rows by default): TFLOP/s of
``torch._scaled_mm`` (W8A8, activation quantisation included and excluded), of the row-chunked dequantise + cuBLAS
fallback, and of cuBLAS bf16. Every measurement is wrapped: an error is recorded in the JSON and the run goes on.
Results go to DIR/fp8-kernels.json (rewritten after each shape, so a cut-short run leaves what it measured).

  python3 bench/fp8_kernels.py --out DIR [--shapes o,down] [--rows 1,16,32] [--prefill-rows 512,2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.fast.fp8 import Fp8Weight, quantize_fp8
from inference.fast.gemm import dequant_linear, quantize_rows_fp8, scaled_mm_linear

SHAPES = {
    "qkv": (10240, 8192),
    "o": (8192, 8192),
    "gate_up": (57344, 8192),
    "down": (8192, 28672),
    "lm_head": (128256, 8192),
}


def _time(fn: Callable[[int], object], n_mats: int, reps: int = 4, samples: int = 5) -> float:
    """Median seconds per call of fn(i) (i rotates over the matrices, so each call reads its matrix from HBM)."""
    for i in range(n_mats):
        fn(i)
    torch.cuda.synchronize()
    out = []
    for _ in range(samples):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            for i in range(n_mats):
                fn(i)
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3 / (reps * n_mats))
    return statistics.median(out)


def _guard(record: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    try:
        value = fn()
        record[key] = value
        return value
    except Exception as exc:
        record[key] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        print(f"  {key}: ERROR {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        return None


def copy_bandwidth() -> float:
    """TB/s of a device-to-device copy of 2 GiB (read + write counted)."""
    a = torch.empty(1 << 30, dtype=torch.int16, device="cuda")
    b = torch.empty_like(a)
    t = _time(lambda _i: b.copy_(a), 1, reps=5)
    return 2 * (2 << 30) / t / 1e12


def bench_decode(name: str, n: int, k: int, rows: list[int], n_mats: int, copy_tbps: float) -> dict[str, Any]:
    from inference.fast import kernels

    res: dict[str, Any] = {"shape": [n, k]}
    dense = [torch.randn((n, k), device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(n_mats)]
    fp8: list[Fp8Weight] = [quantize_fp8(w) for w in dense]
    fp8_bytes = fp8[0].nbytes()
    bf16_bytes = n * k * 2
    res["fp8_bytes"] = fp8_bytes
    for m in rows:
        rec: dict[str, Any] = {}
        res[f"m{m}"] = rec
        x = torch.randn((m, k), device="cuda", dtype=torch.bfloat16)

        def run_cublas(x: torch.Tensor = x) -> float:
            return _time(lambda i: F.linear(x, dense[i]), n_mats)

        t = _guard(rec, "cublas_bf16_s", run_cublas)
        if t:
            rec["cublas_bf16_TBps"] = round(bf16_bytes / t / 1e12, 3)
        best: tuple[float, str] | None = None
        for cfg in kernels.FP8_GEMM_CONFIGS:
            label = "fp8_" + "x".join(map(str, cfg))

            def run(x: torch.Tensor = x, cfg: tuple[int, ...] = cfg) -> float:
                return _time(lambda i: kernels.fp8_skinny_linear(x, fp8[i].data, fp8[i].scale, cfg), n_mats)

            t = _guard(rec, label + "_s", run)
            if t:
                tbps = fp8_bytes / t / 1e12
                rec[label + "_TBps"] = round(tbps, 3)
                if best is None or tbps > best[0]:
                    best = (tbps, label)
        if best is not None:
            rec["best"] = best[1]
            rec["best_TBps"] = round(best[0], 3)
            rec["best_fraction_of_copy_bw"] = round(best[0] / copy_tbps, 3)
            if "cublas_bf16_s" in rec and isinstance(rec["cublas_bf16_s"], float):
                rec["speedup_vs_cublas_bf16"] = round(rec["cublas_bf16_s"] / (fp8_bytes / best[0] / 1e12), 3)
        print(
            f"{name} m={m}: {json.dumps({k: v for k, v in rec.items() if not k.endswith('_s')})}", flush=True
        )
    dense.clear()
    fp8.clear()
    torch.cuda.empty_cache()
    return res


def bench_prefill(name: str, n: int, k: int, m: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"shape": [n, k], "rows": m}
    w = torch.randn((n, k), device="cuda", dtype=torch.bfloat16) * 0.02
    q = quantize_fp8(w)
    x = torch.randn((m, k), device="cuda", dtype=torch.bfloat16)
    flops = 2 * m * n * k

    def tflops(key: str, fn: Callable[[], object]) -> None:
        t = _guard(rec, key + "_s", lambda: _time(lambda _i: fn(), 1, reps=3))
        if t:
            rec[key + "_TFLOPs"] = round(flops / t / 1e12, 1)

    tflops("cublas_bf16", lambda: F.linear(x, w))
    tflops("scaled_mm_with_act_quant", lambda: scaled_mm_linear(x, q))
    xq, sx = quantize_rows_fp8(x)
    tflops(
        "scaled_mm_without_act_quant",
        lambda: torch._scaled_mm(
            xq,
            q.data.t(),
            scale_a=sx,
            scale_b=q.scale.view(1, n),
            out_dtype=torch.bfloat16,
            use_fast_accum=False,
        ),
    )
    tflops("dequant_cublas", lambda: dequant_linear(x, q))

    def rel_err() -> float:
        exact = F.linear(x.float(), q.dequantize(torch.float32))
        return round(float((scaled_mm_linear(x, q).float() - exact).norm() / exact.norm()), 5)

    _guard(rec, "scaled_mm_rel_err_vs_dequant", rel_err)
    print(
        f"prefill {name} m={m}: {json.dumps({k: v for k, v in rec.items() if not k.endswith('_s')})}",
        flush=True,
    )
    return rec


def bench_fp8_linear(
    device: torch.device | None = None,
    shapes: list[str] | None = None,
    rows: list[int] | None = None,
    prefill_rows: Sequence[int] = (512, 2048),
    n_mats: int = 2,
    out_file: Path | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark on ``device`` (CUDA); returns (and writes to ``out_file``) the results."""
    device = device or torch.device("cuda")
    if device.index is None:  # set_device needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "decode": {},
        "prefill": {},
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None

    def save() -> None:
        if out_file is not None:
            out_file.write_text(json.dumps(result, indent=1))

    decode_rows = rows or [1, 16, 32]
    copy = _guard(result, "copy_TBps", lambda: round(copy_bandwidth(), 3)) or 4.0
    print(f"copy bandwidth {copy} TB/s", flush=True)
    for name in shapes or list(SHAPES):
        n, k = SHAPES[name]

        def decode(name: str = name, n: int = n, k: int = k) -> dict[str, Any]:
            return bench_decode(name, n, k, decode_rows, n_mats, copy)

        _guard(result["decode"], name, decode)
        save()
        if name == "lm_head":
            continue
        for pm in prefill_rows:

            def prefill(name: str = name, n: int = n, k: int = k, pm: int = pm) -> dict[str, Any]:
                return bench_prefill(name, n, k, pm)

            _guard(result["prefill"], f"{name}.m{pm}", prefill)
            save()
    save()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rows", default="1,16,32")
    ap.add_argument("--prefill-rows", default="512,2048", help="row counts for prefill; empty: none")
    ap.add_argument(
        "--mats", type=int, default=2, help="matrices per shape, rotated so the L2 cache does not help"
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/fp8_kernels.py needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "fp8-kernels.json"
    try:
        bench_fp8_linear(
            torch.device("cuda"),
            shapes=[s for s in args.shapes.split(",") if s],
            rows=[int(r) for r in args.rows.split(",") if r],
            prefill_rows=[int(r) for r in args.prefill_rows.split(",") if r],
            n_mats=args.mats,
            out_file=out_file,
        )
    except Exception:
        traceback.print_exc()
        raise
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
