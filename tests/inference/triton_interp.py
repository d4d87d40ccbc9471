"""Running the Triton kernels on a CPU: Triton's interpreter (``TRITON_INTERPRET=1``, set in a child pytest only:
the variable must be set before Triton is imported and must not leak into the other tests) with the patches its
3.6 release needs, applied only in that child.

1. ``tl.dot`` on bf16 operands multiplies their uint16 storage as integers (numpy has no bf16): they are converted
   to float32 first (exact), as the interpreter already does for fp8 operands.
2. Scalars are 1-element arrays and ``int()`` of those fails with numpy >= 2.4, so ``tl.range(0, K, ...)`` over a
   runtime K raises: they are indexed by element.
3. Its float32 -> bf16 conversion truncates, and its float32 -> e4m3 conversion rounds the mantissa without carrying
   into the exponent (a value that rounds up to 128 becomes 64): both are converted as the GPU does (round to
   nearest even), through torch.
"""

from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()


def kernel_device() -> torch.device:
    """Where a kernel test runs: the GPU, or the CPU inside the interpreter child (patched first)."""
    if INTERPRET:
        patch_interpreter()
        return torch.device("cpu")
    return torch.device("cuda" if CUDA else "cpu")


def patch_interpreter() -> None:
    """Apply the three patches above (idempotent)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as ti

    if getattr(ti, "_hanbot_patched", False):
        return
    create_dot = ti.InterpreterBuilder.create_dot

    def as_f32(h: ti.TensorHandle) -> ti.TensorHandle:
        if h.dtype.scalar == tl.bfloat16:
            return ti.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
        return create_dot(self, as_f32(a), as_f32(b), d, input_precision, max_num_imprecise_acc)

    patch_tensor = ti._patch_lang_tensor

    def patch(tensor, scope):  # type: ignore[no-untyped-def]
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    convert = ti._convert_float
    rounded = {tl.bfloat16: (torch.bfloat16, torch.uint16), tl.float8e4nv: (torch.float8_e4m3fn, torch.uint8)}

    def convert_rounding(input, input_dtype, output_dtype, rounding_mode):  # type: ignore[no-untyped-def]
        if input_dtype == tl.float32 and output_dtype in rounded:
            dtype, bits = rounded[output_dtype]
            x = torch.from_numpy(np.ascontiguousarray(input, dtype=np.float32).copy())
            return x.to(dtype).view(bits).numpy()
        return convert(input, input_dtype, output_dtype, rounding_mode)

    ti.InterpreterBuilder.create_dot = dot
    ti._patch_lang_tensor = patch
    ti._convert_float = convert_rounding
    ti._hanbot_patched = True
