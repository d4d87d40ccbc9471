"""The Llama forward pass over paged KV: a varlen prefill (eager) and a batched one-token decode (graph-capturable).

Same function as transformers' ``LlamaForCausalLM``: RMSNorm, rotary embedding with the config's (Llama-3) scaling,
grouped-query attention, SiLU MLP, residuals rounded in the model dtype as the eager forward rounds them.
Under tensor parallelism (``parallel.py``) each rank runs its heads and MLP columns; the O and down projections'
partial sums are all-reduced, and the logits gathered, so every rank ends each step with the same full logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inference.fast import ops
from inference.fast.gemm import LinearPlan
from inference.fast.lora import LoraBatch, LoraPool
from inference.fast.parallel import Parallel, SingleProcess
from inference.fast.weights import LlamaWeights, Matrix, rope_tables

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """One sequence's piece of a prefill batch: tokens [offset, offset+length) at positions start.."""

    slot: int
    offset: int
    length: int
    start: int
    blocks: torch.Tensor  # the slot's block ids (long, device), enough for start + length tokens


class FastLlama:
    def __init__(
        self,
        weights: LlamaWeights,
        num_blocks: int,
        block_size: int,
        max_positions: int,
        plan: LinearPlan | None = None,
        parallel: Parallel | None = None,
        kv_fp8: bool = False,
    ) -> None:
        spec = weights.spec
        self.plan = plan or LinearPlan(weights.device, "cublas")
        self.parallel = parallel or SingleProcess()
        self.w = weights
        self.spec = spec
        self.block_size = block_size
        self.scale = spec.head_dim**-0.5
        self.cos, self.sin = rope_tables(weights, max_positions)
        self.kv_fp8 = kv_fp8  # e4m3 KV with one float32 scale per token and head (ops.py)
        self.lora: LoraPool | None = None  # the adapter pool, when the decoder serves adapters
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.k_scale: list[torch.Tensor | None] = []
        self.v_scale: list[torch.Tensor | None] = []
        self.allocate_kv(num_blocks)

    def allocate_kv(self, num_blocks: int) -> None:
        """(Re)allocate the paged KV cache: one tensor per layer and kind, small enough for the allocator's holes."""
        self.free_kv()
        spec, w = self.spec, self.w
        shape = (num_blocks, spec.num_kv_heads, self.block_size, spec.head_dim)
        dtype = ops.FP8_KV if self.kv_fp8 else w.dtype
        for _ in range(spec.num_layers):
            self.k_cache.append(torch.zeros(shape, dtype=dtype, device=w.device))
            self.v_cache.append(torch.zeros(shape, dtype=dtype, device=w.device))
            for scales in (self.k_scale, self.v_scale):
                scales.append(torch.ones(shape[:3], device=w.device) if self.kv_fp8 else None)

    def free_kv(self) -> None:
        self.k_cache.clear()
        self.v_cache.clear()
        self.k_scale.clear()
        self.v_scale.clear()

    def tune(self) -> None:
        """Pick cuBLAS or a Triton kernel per weight shape and batch size class (CUDA only)."""
        layers = self.w.layers[:4]
        self.plan.tune(
            {
                "qkv": [lw.qkv for lw in layers],
                "o": [lw.o for lw in layers],
                "gate_up": [lw.gate_up for lw in layers],
                "down": [lw.down for lw in layers],
                "lm_head": [self.w.lm_head],
            }
        )

    def _layers(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        attend: object,
        lora: LoraBatch | None = None,
    ) -> torch.Tensor:
        spec, w = self.spec, self.w
        eps = spec.rms_norm_eps
        residual = x.clone()
        h = ops.rms_norm(x, w.layers[0].input_norm, eps)
        for i, layer in enumerate(w.layers):
            q = self._qkv_rope(h, layer.qkv, lora, i, positions, slot_mapping)
            a = attend(q, i)  # type: ignore[operator]
            h = self._linear_rms_norm(a, layer.o, lora, "o", i, layer.post_norm, residual)
            g = self._gate_up_silu(h, layer.gate_up, lora, i)
            nxt = w.layers[i + 1].input_norm if i + 1 < len(w.layers) else w.norm
            h = self._linear_rms_norm(g, layer.down, lora, "down", i, nxt, residual)
        return h  # final-normed hidden states

    def _linear_rms_norm(
        self,
        x: torch.Tensor,
        w: Matrix,
        lora: LoraBatch | None,
        proj: str,
        layer: int,
        weight: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """A row-parallel product (o, down), then the residual add + RMSNorm after it (``residual`` updated in place).
        Tensor parallel: each rank adds its partial adapter product before the partial sums are all-reduced, and the
        norm follows the all-reduce. One rank with adapters: in decode their expand is one kernel with the norm."""
        eps = self.spec.rms_norm_eps
        if lora is None or self.parallel.world > 1:
            y = self.parallel.all_reduce(self._linear(x, w, lora, proj, layer))
            return ops.rms_norm(y, weight, eps, residual)
        y, partial = self._adapted_product(x, w, lora, proj, layer)
        return lora.expand_rms_norm(partial, x, y, proj, layer, weight, eps, residual)

    def _linear(
        self, x: torch.Tensor, w: Matrix, lora: LoraBatch | None, proj: str, layer: int
    ) -> torch.Tensor:
        if lora is None:
            return self.plan.linear(x, w)
        y, partial = self._adapted_product(x, w, lora, proj, layer)
        return lora.expand(partial, x, y, proj, layer)

    def _adapted_product(
        self, x: torch.Tensor, w: Matrix, lora: LoraBatch, proj: str, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The base product of ``x`` and what the adapters' expand reads: in decode, the rows' rank values from the
        product's own launch (the shrink folded into it) where a Triton kernel serves it; else the separate shrink's
        output (launched first: with HANBOT_LORA_OVERLAP=1 on a side stream, beside the base product), or None (the
        torch path, a prefill pass)."""
        folded = lora.fold(self.plan, x, w, proj, layer)
        if folded is not None:
            return folded
        partial = lora.shrink(x, proj, layer)
        return self.plan.linear(x, w), partial

    def _qkv_rope(
        self,
        h: torch.Tensor,
        w: Matrix,
        lora: LoraBatch | None,
        layer: int,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """Q/K/V, rotary embedding, K and V into the cache; returns q. With adapters, their expand is fused into the
        rotary kernel in decode."""
        spec = self.spec
        rope = (
            positions,
            self.cos,
            self.sin,
            self.k_cache[layer],
            self.v_cache[layer],
            slot_mapping,
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            self.k_scale[layer],
            self.v_scale[layer],
        )
        if lora is None:
            return ops.rope_store(self.plan.linear(h, w), *rope)
        qkv, partial = self._adapted_product(h, w, lora, "qkv", layer)
        return lora.rope_store(partial, h, qkv, layer, *rope)

    def _gate_up_silu(self, h: torch.Tensor, w: Matrix, lora: LoraBatch | None, layer: int) -> torch.Tensor:
        """SiLU(gate)·up; with adapters, their expand and the SiLU are one kernel in decode."""
        if lora is None:
            return ops.silu_mul(self.plan.linear(h, w))
        gate_up, partial = self._adapted_product(h, w, lora, "gate_up", layer)
        return lora.expand_silu(partial, h, gate_up, layer)

    def logits(self, h: torch.Tensor, lora: LoraBatch | None = None) -> torch.Tensor:
        """[rows, vocab] float32: every rank's slice of the vocabulary gathered (identity on one rank)."""
        local = self._linear(h, self.w.lm_head, lora, "lm_head", 0)
        return self.parallel.gather_rows(local, self.spec.vocab_size).float()

    def prefill(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        segments: list[Segment],
        lora: LoraBatch | None = None,
    ) -> torch.Tensor:
        """Run the tokens of several sequences in one pass; returns final hidden states [tokens, hidden]."""
        spec = self.spec
        batch = ops.prefill_batch(  # the kernel's tables, once per pass for every layer
            [(s.offset, s.length, s.start, s.blocks) for s in segments],
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            self.block_size,
            ids.device,
        )

        def attend(q: torch.Tensor, layer: int) -> torch.Tensor:
            return ops.prefill_attention_batch(
                q,
                self.k_cache[layer],
                self.v_cache[layer],
                batch,
                self.scale,
                self.k_scale[layer],
                self.v_scale[layer],
            )

        x = F.embedding(ids, self.w.embed)
        return self._layers(x, positions, slot_mapping, attend, lora)

    def decode(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        n_split: int,
        lora: LoraBatch | None = None,
    ) -> torch.Tensor:
        """One token per row; returns logits [rows, vocab] (float32). ``lora``: each row's adapter."""

        def attend(q: torch.Tensor, layer: int) -> torch.Tensor:
            return ops.decode_attention(
                q,
                self.k_cache[layer],
                self.v_cache[layer],
                block_tables,
                seq_lens,
                self.scale,
                n_split,
                self.k_scale[layer],
                self.v_scale[layer],
            )

        x = F.embedding(ids, self.w.embed)
        return self.logits(self._layers(x, positions, slot_mapping, attend, lora), lora)
