"""Unmerged LoRA adapters in the fast decoder: a fixed pool of GPU slots, one adapter per request.

The base weights stay as they are (bf16 or FP8, whole or one tensor-parallel rank's slice); every projection adds
``scale · (x·A)·B`` for the adapter of each row. The pool is allocated once, when the decoder starts (before the KV
cache takes the free memory): for every layer and fused projection an ``A`` stack [slots, parts·R, in] and a ``B``
stack [slots, R, out], R the largest rank (smaller adapters are padded with zeros), the scale folded into B. Loading
an adapter copies its matrices into a free slot: no graph is recaptured, nothing is recompiled.

Fused projections: Q/K/V and gate/up are one matrix product each in the decoder, so their adapters are one too. The
shrink ``x·A`` runs all parts at once (A_q, A_k, A_v stacked: parts·R values per row); the expand gives each output
column the R values of its own part (the column ranges of q, k and v).

Per row the adapter is a pool index (-1: the base model), read on the device: in a decode step from the decoder's
slot → index buffer (inside the CUDA graph, like the row → slot map), in a prefill pass per sequence.

On CUDA, a decode step folds the shrink into the base product (``fold_rows``): where the matrix-product plan serves
the product with a Triton skinny kernel (``gemm.LinearPlan.linear_folded``: FP8 weights always, bf16 ones where a
Triton config won or came within a shrink launch of cuBLAS), that kernel's launch also multiplies the rows by the
projection's whole A stack, viewed as extra weight rows [slots·parts·R, in] (``kernels.Tail``; the base weights are
neither copied nor moved). Those programs run first and write every row's x·A of every slot a row of the batch uses
into a float32 buffer [rows, slots·parts·R] beside the base output (which stays a contiguous [rows, out] tensor, so
the attention, the norms and the all-reduce take it as before); tiles of slots no row uses are skipped. The expand
reads row m's values at its slot's columns (a slot stride). The rank values are float32 sums of the same products
as the shrink's (x and A in the activations' dtype; the FP8 kernel's f16 mode takes A in f16, exact for
|a| ≥ 2^-14).

Launches per decode layer. The base layer launches 10 kernels: the Q/K/V product, rotary + KV write, attention and
its reduction, the o product, residual add + RMSNorm, the gate/up product, SiLU·up, the down product, residual add +
RMSNorm. With adapters every expand is fused into the kernel that follows its product: Q/K/V's into the rotary + KV
write, gate/up's into SiLU·up and, on one rank, o's and down's into the residual add + RMSNorm after them
(``expand_rms_norm_rows``). So with the fold an adapted layer launches the base layer's 10 kernels, each doing the
adapters' part too (the fold's shrink in the products, the expands in the kernels after them), where the plain o and
down expands made it 12; with the separate shrink, 4 more (14, was 16). An FP8 KV cache keeps the Q/K/V expand as
a kernel of its own (+1); under tensor parallelism the o and down expands stay their own kernels (+2: the
all-reduce of the partial sums lies between each and its norm). The o and down fusion is opt-in for now
(``HANBOT_LORA_NORM_FUSE=1``, read when the pool is made) until the GPU A/B of ``bench/lora_profile.py`` shows it pays:
by default those two expands are kernels of their own (12 launches with the fold).

Where the plan chose cuBLAS (or more than 32 rows, or ``HANBOT_LORA_FOLD=0``, read when the pool is made) the
shrink is a kernel of its own (``lora_kernels``: a split-K shrink whose last program per row sums the partials into
the row's rank values (from 2 rows on; one row: the expand sums them)); ``HANBOT_LORA_OVERLAP=1`` launches it on a
side stream beside the base product (a fork and join in the graph; off by default: on an H100 it did not help).
Either way the expand is one kernel per projection in which each program loads an adapter's B tile once for all the
rows of its row block that use it and adds the product into the base output in place (rows of the base model are
skipped); the Q/K/V and gate/up expands are fused into the rotary and SiLU kernels that follow them, and on one rank
the o and down expands into the residual add + RMSNorm (one program per row: the row's slot's B once per row).
Prefill passes (several tokens per sequence) and machines without Triton do the same arithmetic in torch.

Tensor parallel: column-parallel projections (qkv, gate_up, lm_head) keep A whole and their rows of B; row-parallel
ones (o, down) keep their columns of A and B whole, and each rank adds ``(x_r·A_r)·B`` to its partial output before
the all-reduce that already sums those partial outputs: the sum over ranks is ``(x·A)·B``, with no collective added.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from inference.fast import ops
from inference.fast.weights import LlamaSpec, RankSlices

if TYPE_CHECKING:
    from inference.fast.gemm import LinearPlan, Matrix

_log = logging.getLogger(__name__)

PROJECTIONS = ("qkv", "o", "gate_up", "down")
MAX_KERNEL_ROWS = 64  # decode batches up to this many rows use the Triton kernels
HEAD = "lm_head"
# PEFT module name → (fused projection, part)
MODULES: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv", 0),
    "k_proj": ("qkv", 1),
    "v_proj": ("qkv", 2),
    "o_proj": ("o", 0),
    "gate_proj": ("gate_up", 0),
    "up_proj": ("gate_up", 1),
    "down_proj": ("down", 0),
    "lm_head": (HEAD, 0),
}
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_HEAD_KEY = re.compile(r"(?:^|\.)lm_head\.lora_([AB])\.weight$")
# copies of frozen base matrices PEFT saves beside the adapter when the head is a target ("save_embedding_layers")
_SAVED_BASE = re.compile(r"(?:lm_head|embed_tokens)(?:\.base_layer)?\.weight$")


class UnsupportedAdapter(ValueError):
    """The folder is not a LoRA adapter the fast decoder can serve (the message says why)."""


@dataclass
class PeftAdapter:
    """A PEFT LoRA read from its folder: per (layer or None for the head, module) the pair (A [r, in], B [out, r])."""

    rank: int
    scale: float
    pairs: dict[tuple[int | None, str], tuple[torch.Tensor, torch.Tensor]]


def read_peft_adapter(path: str | Path) -> PeftAdapter:
    """adapter_config.json + adapter_model.safetensors, as ``PeftModel.save_pretrained`` writes them."""
    folder = Path(path)
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedAdapter(f"no readable adapter_config.json in {folder}: {exc}") from exc
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise UnsupportedAdapter(f"{config.get('peft_type')} adapters are not LoRA")
    if config.get("use_dora"):
        raise UnsupportedAdapter("DoRA adapters are not served unmerged")
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapter("LoRA bias terms are not served")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UnsupportedAdapter("per-module ranks (rank_pattern / alpha_pattern) are not served")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    from safetensors.torch import load_file

    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise UnsupportedAdapter(f"{weights_file} is missing")
    halves: dict[tuple[int | None, str], dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_file)).items():
        layer_match, head_match = _LAYER_KEY.search(key), _HEAD_KEY.search(key)
        if _SAVED_BASE.search(key) and "lora_" not in key:
            continue  # the frozen base matrix itself: the decoder serves its own
        if layer_match:
            layer: int | None = int(layer_match.group(1))
            module, half = layer_match.group(2), layer_match.group(3)
        elif head_match:
            layer, module, half = None, HEAD, head_match.group(1)
        else:
            raise UnsupportedAdapter(f"adapter tensor {key} is on a module the fast decoder does not adapt")
        if module not in MODULES:
            raise UnsupportedAdapter(f"adapter tensor {key}: module {module} is not a Llama projection")
        halves.setdefault((layer, module), {})[half] = tensor
    pairs = {}
    for where, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise UnsupportedAdapter(f"adapter module {where} lacks lora_A or lora_B")
        if ab["A"].shape[0] != rank or ab["B"].shape[1] != rank:
            raise UnsupportedAdapter(
                f"adapter module {where} has rank {ab['A'].shape[0]}, the config says {rank}"
            )
        pairs[where] = (ab["A"], ab["B"])
    return PeftAdapter(rank=rank, scale=scale, pairs=pairs)


@dataclass(frozen=True)
class Layout:
    """One adapted projection as this rank computes it: input width and the widths of its fused output parts."""

    k: int
    outs: tuple[int, ...]

    @property
    def n(self) -> int:
        return sum(self.outs)


def layouts(spec: LlamaSpec, vocab_rows: int) -> dict[str, Layout]:
    """This rank's shapes (``spec`` is its slice; ``vocab_rows`` its rows of the output head)."""
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    h, ff = spec.hidden_size, spec.intermediate_size
    return {
        "qkv": Layout(h, (q, kv, kv)),
        "o": Layout(q, (h,)),
        "gate_up": Layout(h, (ff, ff)),
        "down": Layout(ff, (h,)),
        HEAD: Layout(h, (vocab_rows,)),
    }


def pool_bytes(spec: LlamaSpec, vocab_rows: int, slots: int, max_rank: int, element_size: int = 2) -> int:
    """GPU bytes of an adapter pool (A and B stacks of every layer and the head)."""
    rank = pool_rank(max_rank)
    shapes = layouts(spec, vocab_rows)
    per_layer = sum(len(shapes[p].outs) * rank * shapes[p].k + rank * shapes[p].n for p in PROJECTIONS)
    head = rank * shapes[HEAD].k + rank * shapes[HEAD].n
    return slots * (spec.num_layers * per_layer + head) * element_size


def pool_rank(max_rank: int) -> int:
    """Ranks are padded to a power of two (the kernels' tile)."""
    return 1 << max(0, (max_rank - 1).bit_length())


class LoraPool:
    """``slots`` adapters of rank ≤ ``max_rank`` on the device, for this rank's slice of the model."""

    def __init__(
        self,
        spec: LlamaSpec,
        vocab_rows: int,
        *,
        slots: int,
        max_rank: int,
        device: torch.device,
        dtype: torch.dtype,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.spec = spec
        self.slots = slots
        self.max_rank = max_rank
        self.rank = pool_rank(max_rank)
        self.device = device
        self.dtype = dtype
        self.shapes = layouts(spec, vocab_rows)
        full = replace(
            spec,
            num_heads=spec.num_heads * world,
            num_kv_heads=spec.num_kv_heads * world,
            intermediate_size=spec.intermediate_size * world,
        )
        self.cut = RankSlices.of(full, rank, world)
        self.vocab_size = spec.vocab_size
        r = self.rank
        self.a: dict[str, list[torch.Tensor]] = {}
        self.b: dict[str, list[torch.Tensor]] = {}
        for proj in (*PROJECTIONS, HEAD):
            shape = self.shapes[proj]
            count = 1 if proj == HEAD else spec.num_layers
            self.a[proj] = [
                torch.zeros((slots, len(shape.outs) * r, shape.k), dtype=dtype, device=device)
                for _ in range(count)
            ]
            self.b[proj] = [
                torch.zeros((slots, r, shape.n), dtype=dtype, device=device) for _ in range(count)
            ]
        self.kernels = _lora_kernels(device)
        # the shrinks' per-row counters (one stream of shrinks: the main stream or the side stream)
        self.counters = (
            self.kernels.new_counters(device, MAX_KERNEL_ROWS) if self.kernels is not None else None
        )
        # HANBOT_LORA_OVERLAP=1: the shrink of each projection on a side stream, beside the base product (a fork in
        # the graph). Off by default: on an H100 it did not shorten the graph step (lora-profile-h100.json)
        self.side = (
            torch.cuda.Stream(device)
            if self.kernels is not None
            and device.type == "cuda"
            and os.environ.get("HANBOT_LORA_OVERLAP", "0") == "1"
            else None
        )
        # HANBOT_LORA_FOLD=0: the separate shrink kernel again (A/B on the GPU). On by default: each decode product
        # served by a Triton skinny kernel computes every row's x·A in its own launch (``fold_rows``)
        self.fold = self.kernels is not None and os.environ.get("HANBOT_LORA_FOLD", "1") != "0"
        # HANBOT_LORA_NORM_FUSE=1: the o and down expands each fused with the residual add + RMSNorm after it
        # (``expand_rms_norm_rows``). Off by default until a GPU A/B decides: one program per row reads the row's
        # whole B (256 KB at the 70B widths, rank 16) on one SM, which at one row may cost what the launch saves
        self.norm_fuse = self.kernels is not None and os.environ.get("HANBOT_LORA_NORM_FUSE", "0") == "1"
        self.block_n = {proj: _block_n(self.shapes[proj].outs) for proj in self.shapes}
        _log.info(
            "LoRA pool: %d slots of rank %d, %.2f GiB",
            slots,
            r,
            pool_bytes(spec, vocab_rows, slots, max_rank, torch.finfo(dtype).bits // 8) / (1 << 30),
        )

    # ---- loading ------------------------------------------------------------------------------------------------

    def load(self, index: int, adapter: PeftAdapter) -> None:
        """Copy ``adapter`` into slot ``index`` (what was there is overwritten; modules it lacks become zero)."""
        if not 0 <= index < self.slots:
            raise ValueError(f"adapter slot {index} is outside 0..{self.slots - 1}")
        self.check(adapter)
        with torch.no_grad():
            for proj in (*PROJECTIONS, HEAD):
                for t in (*self.a[proj], *self.b[proj]):
                    t[index].zero_()
            for (layer, module), (a, b) in adapter.pairs.items():
                self._load_module(index, layer, module, a, b, adapter.scale)

    def check(self, adapter: PeftAdapter) -> None:
        """Raise UnsupportedAdapter if ``adapter`` does not fit this pool (its rank, its layers)."""
        if adapter.rank > self.max_rank:
            raise UnsupportedAdapter(
                f"the adapter's rank {adapter.rank} is above engine.lora_max_rank ({self.max_rank})"
            )
        for (layer, _module), _pair in adapter.pairs.items():
            if layer is not None and not 0 <= layer < self.spec.num_layers:
                raise UnsupportedAdapter(
                    f"the adapter names layer {layer}; the model has {self.spec.num_layers}"
                )

    def _load_module(
        self, index: int, layer: int | None, module: str, a: torch.Tensor, b: torch.Tensor, scale: float
    ) -> None:
        proj, part = MODULES[module]
        shape = self.shapes[proj]
        a_pool = self.a[proj][layer if layer is not None else 0][index]
        b_pool = self.b[proj][layer if layer is not None else 0][index]
        r = a.shape[0]
        a = self._a_columns(module, a)  # row-parallel: this rank's input columns
        b = self._b_rows(module, b)  # column-parallel: this rank's output rows
        if a.shape[1] != shape.k or b.shape[0] != shape.outs[part]:
            raise UnsupportedAdapter(
                f"adapter module {module} has shape A {tuple(a.shape)}, B {tuple(b.shape)}: not this model's"
            )
        col = sum(shape.outs[:part])
        a_pool[part * self.rank : part * self.rank + r].copy_(a.to(self.device, self.dtype))
        b_pool[:r, col : col + b.shape[0]].copy_(
            (b.to(self.device, torch.float32) * scale).t().to(self.dtype)
        )

    def _a_columns(self, module: str, a: torch.Tensor) -> torch.Tensor:
        if module == "o_proj":
            return a[:, self.cut.q]
        if module == "down_proj":
            return a[:, self.cut.ff]
        return a

    def _b_rows(self, module: str, b: torch.Tensor) -> torch.Tensor:
        if module == "q_proj":
            return b[self.cut.q]
        if module in ("k_proj", "v_proj"):
            return b[self.cut.kv]
        if module in ("gate_proj", "up_proj"):
            return b[self.cut.ff]
        if module == HEAD:
            rows = b[self.cut.vocab.start : min(self.cut.vocab.stop, self.vocab_size)]
            pad = self.cut.vocab.stop - self.cut.vocab.start - rows.shape[0]
            return torch.cat([rows, rows.new_zeros((pad, rows.shape[1]))]) if pad > 0 else rows
        return b

    # ---- the products -------------------------------------------------------------------------------------------

    def fold_rows(
        self, plan: LinearPlan, x: torch.Tensor, w: Matrix, proj: str, layer: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Decode: the base product ``x·wᵀ`` and, from the same launch, ``x·A`` of every pool slot that a row uses
        (the A stack as extra output columns, [rows, slots·parts·R] float32), which the expands read at the row's
        slot. None where the plan has no Triton kernel for this product (or the fold is off): ``shrink_rows``."""
        if not self.fold or x.shape[0] > MAX_KERNEL_ROWS:
            return None
        a = self.a[proj][layer]
        return plan.linear_folded(x, w, a.view(-1, a.shape[2]), index, a.shape[1])

    def shrink_rows(self, x: torch.Tensor, proj: str, layer: int, index: torch.Tensor) -> torch.Tensor | None:
        """Decode, first half: each row's ``x·A`` (the Triton path; None: the torch path does it all in
        ``expand_rows``). With ``HANBOT_LORA_OVERLAP=1`` it runs on a side stream, beside the base product."""
        if self.kernels is None or x.shape[0] > MAX_KERNEL_ROWS:
            return None
        x = x.contiguous()
        a = self.a[proj][layer]
        partial: torch.Tensor = self.kernels.new_partial(x, a)  # allocated on the main stream
        if self.side is None:
            self.kernels.lora_shrink(x, a, index, partial, self.counters)
            return partial
        self.side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(self.side):
            self.kernels.lora_shrink(x, a, index, partial, self.counters)
        return partial

    def expand_rows(
        self,
        partial: torch.Tensor | None,
        x: torch.Tensor,
        y: torch.Tensor,
        proj: str,
        layer: int,
        index: torch.Tensor,
    ) -> None:
        """Decode, second half: ``y[i] += (x[i]·A)·B`` of adapter ``index[i]`` (-1: none), in place."""
        b = self.b[proj][layer]
        outs = self.shapes[proj].outs
        if partial is None:
            add_rows_ref(x, y, self.a[proj][layer], b, index, outs, self.rank)
            return
        assert self.kernels is not None
        self._join_shrink(partial)
        self.kernels.lora_expand(partial, y, b, index, outs, self.rank, self.block_n[proj])

    def expand_rms_norm_rows(
        self,
        partial: torch.Tensor | None,
        x: torch.Tensor,
        y: torch.Tensor,
        proj: str,
        layer: int,
        index: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """Decode, o and down on one rank: ``ops.rms_norm(y', weight, eps, residual)`` of ``y`` plus each row's adapter
        product (one fused kernel on CUDA; ``residual`` updated in place as the norm updates it). With
        ``HANBOT_LORA_NORM_FUSE=0`` or on the torch path: the expand, then the norm."""
        if partial is None or not self.norm_fuse:
            self.expand_rows(partial, x, y, proj, layer, index)
            return ops.rms_norm(y, weight, eps, residual)
        assert self.kernels is not None and len(self.shapes[proj].outs) == 1
        self._join_shrink(partial)
        out: torch.Tensor = self.kernels.lora_expand_rms_norm(
            partial, y, self.b[proj][layer], index, self.rank, weight, eps, residual
        )
        return out

    def expand_silu_rows(
        self, partial: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor, layer: int, index: torch.Tensor
    ) -> torch.Tensor:
        """Decode, gate/up: SiLU(gate)·up of ``y`` plus each row's adapter product (one fused kernel on CUDA)."""
        if partial is None:
            self.expand_rows(partial, x, y, "gate_up", layer, index)
            return ops.silu_mul(y)
        assert self.kernels is not None
        self._join_shrink(partial)
        out: torch.Tensor = self.kernels.lora_expand_silu(
            partial, y, self.b["gate_up"][layer], index, self.rank
        )
        return out

    def rope_store_rows(
        self,
        partial: torch.Tensor | None,
        x: torch.Tensor,
        qkv: torch.Tensor,
        layer: int,
        index: torch.Tensor,
        *rope: Any,
    ) -> torch.Tensor:
        """Decode, Q/K/V: ``ops.rope_store`` of ``qkv`` plus each row's adapter product (one fused kernel on CUDA;
        ``rope``: rope_store's arguments after qkv). With an FP8 KV cache (its scales at the end of ``rope``) the
        adapter product is added first and ``ops.rope_store`` quantises: the fused kernel writes 16-bit KV only."""
        fp8_kv = len(rope) > 9 and rope[9] is not None
        if partial is None or fp8_kv:
            self.expand_rows(partial, x, qkv, "qkv", layer, index)
            return ops.rope_store(qkv, *rope)
        assert self.kernels is not None
        self._join_shrink(partial)
        q: torch.Tensor = self.kernels.lora_rope_store(
            partial, qkv, self.b["qkv"][layer], index, self.rank, *rope[:9]
        )
        return q

    def _join_shrink(self, partial: torch.Tensor) -> None:
        """The main stream waits for a shrink launched on the side stream (``partial``, 3-D; the fold's rank values,
        2-D, came from the main stream's own product)."""
        if self.side is not None and partial.dim() == 3:
            torch.cuda.current_stream(partial.device).wait_stream(self.side)

    def add_segments(
        self, x: torch.Tensor, y: torch.Tensor, proj: str, layer: int, segments: list[tuple[int, int, int]]
    ) -> None:
        """Prefill: for each (offset, length, index) with index ≥ 0, rows offset.. of ``y`` get that adapter."""
        a, b = self.a[proj][layer], self.b[proj][layer]
        outs = self.shapes[proj].outs
        for offset, length, index in segments:
            if index >= 0:
                _add_product(
                    x[offset : offset + length],
                    y[offset : offset + length],
                    a[index],
                    b[index],
                    outs,
                    self.rank,
                )


@dataclass(frozen=True)
class LoraBatch:
    """Which adapter each row of a forward pass uses: ``index`` (decode: a device tensor per row) or ``segments``
    (prefill: host (offset, length, pool index) per sequence)."""

    pool: LoraPool
    index: torch.Tensor | None = None
    segments: list[tuple[int, int, int]] | None = None

    def fold(
        self, plan: LinearPlan, x: torch.Tensor, w: Matrix, proj: str, layer: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Decode: (the base product, the rows' rank values) from one launch (``LoraPool.fold_rows``); None in a
        prefill pass or where the product does not fold: then ``shrink`` and the base product, as before."""
        return self.pool.fold_rows(plan, x, w, proj, layer, self.index) if self.index is not None else None

    def shrink(self, x: torch.Tensor, proj: str, layer: int = 0) -> torch.Tensor | None:
        """Called before the base product of ``x`` (decode: launches the shrink, maybe beside it)."""
        return self.pool.shrink_rows(x, proj, layer, self.index) if self.index is not None else None

    def expand(
        self, partial: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor, proj: str, layer: int = 0
    ) -> torch.Tensor:
        """Called with the base product ``y``: adds each row's adapter product into it, in place."""
        if self.index is not None:
            self.pool.expand_rows(partial, x, y, proj, layer, self.index)
        elif self.segments:
            self.pool.add_segments(x, y, proj, layer, self.segments)
        return y

    def expand_silu(
        self, partial: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor, layer: int
    ) -> torch.Tensor:
        """gate/up: SiLU(gate)·up of the base product ``y`` with each row's adapter product added first."""
        if self.index is not None:
            return self.pool.expand_silu_rows(partial, x, y, layer, self.index)
        return ops.silu_mul(self.expand(partial, x, y, "gate_up", layer))

    def expand_rms_norm(
        self,
        partial: torch.Tensor | None,
        x: torch.Tensor,
        y: torch.Tensor,
        proj: str,
        layer: int,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """o / down on one rank (no all-reduce between the product and the norm): the residual add + RMSNorm of the
        base product ``y`` with each row's adapter product added first (``ops.rms_norm``'s outputs: the normed rows,
        ``residual`` updated in place)."""
        if self.index is not None:
            return self.pool.expand_rms_norm_rows(
                partial, x, y, proj, layer, self.index, weight, eps, residual
            )
        return ops.rms_norm(self.expand(partial, x, y, proj, layer), weight, eps, residual)

    def rope_store(
        self, partial: torch.Tensor | None, x: torch.Tensor, qkv: torch.Tensor, layer: int, *rope: Any
    ) -> torch.Tensor:
        """Q/K/V: the rotary embedding and KV write of the base product ``qkv`` with each row's adapter product
        added first (``rope``: ``ops.rope_store``'s arguments after qkv)."""
        if self.index is not None:
            return self.pool.rope_store_rows(partial, x, qkv, layer, self.index, *rope)
        return ops.rope_store(self.expand(partial, x, qkv, "qkv", layer), *rope)

    def add(self, x: torch.Tensor, y: torch.Tensor, proj: str, layer: int = 0) -> torch.Tensor:
        """``y`` (the base product of ``x``) plus each row's adapter product."""
        return self.expand(self.shrink(x, proj, layer), x, y, proj, layer)


def _add_product(
    x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, outs: tuple[int, ...], rank: int
) -> None:
    """``y += scale·(x·A)·B`` of one adapter for rows ``x`` [m, k] (A [parts·R, k], B [R, n]), in place, in the
    activations' dtype (a prefill pass's rows: no float32 copy of a [2048, 28672] input)."""
    inter = x @ a.t()  # [m, parts·R]
    col = 0
    for part, width in enumerate(outs):
        y[:, col : col + width] += inter[:, part * rank : (part + 1) * rank] @ b[:, col : col + width]
        col += width


def add_rows_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    outs: tuple[int, ...],
    rank: int,
) -> None:
    """The torch version of the decode kernels (no host synchronisation: capturable), the kernels' reference."""
    valid = (index >= 0).to(torch.float32)[:, None]
    i = index.clamp(min=0).long()
    inter = torch.bmm(a[i].float(), x.float()[:, :, None])[:, :, 0] * valid  # [rows, parts·R]
    col = 0
    for part, width in enumerate(outs):
        d = torch.bmm(inter[:, None, part * rank : (part + 1) * rank], b[i][:, :, col : col + width].float())
        y[:, col : col + width] = (y[:, col : col + width].float() + d[:, 0]).to(y.dtype)
        col += width


def _lora_kernels(device: torch.device) -> ModuleType | None:
    if ops.triton_kernels(device) is None:  # no Triton here (or switched off): the torch path
        return None
    from inference.fast import lora_kernels

    return lora_kernels


def _block_n(outs: tuple[int, ...]) -> int:
    """The expand kernel's column tile: a power of two ≤ 128 dividing every part's width (a tile never straddles
    two parts, so each tile reads one part's R values)."""
    g = 0
    for width in outs[:-1]:
        g = math.gcd(g, width)
    block = 128
    while block > 1 and g % block:
        block //= 2
    return block
