"""Paged KV memory: one preallocated pool of fixed-size blocks for all layers, a block table per slot.

A request reserves every block it can need (prompt + max_new_tokens) when it is admitted, so a running request never
runs out of memory; a request that does not fit now waits (``can_reserve`` is False) instead of failing.
Block 0 is never handed out: padded rows of a batch write there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from inference.fast.weights import LlamaSpec

_log = logging.getLogger(__name__)

GIB = 1 << 30


@dataclass(frozen=True)
class KVBudget:
    num_blocks: int  # including the reserved block 0
    block_size: int

    @property
    def usable_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size


def plan_kv_budget(
    spec: LlamaSpec,
    device: torch.device,
    *,
    block_size: int,
    slots: int,
    max_context: int,
    budget_bytes: int | None,
    reserve_bytes: int,
) -> KVBudget:
    """How many blocks to allocate: from ``budget_bytes``, else from free GPU memory less ``reserve_bytes``.

    Never more than every slot at full context needs. On CPU without a budget: exactly that.
    """
    per_block = spec.kv_bytes_per_token * block_size
    blocks_per_slot = -(-max_context // block_size)
    wanted = slots * blocks_per_slot + 1
    if budget_bytes is None and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached, reusable
        budget_bytes = max(0, free - reserve_bytes)
        _log.info(
            "KV budget from free memory: %.2f GiB free, %.2f GiB reserved", free / GIB, reserve_bytes / GIB
        )
    n = wanted if budget_bytes is None else min(wanted, budget_bytes // per_block)
    if n < 2:
        raise MemoryError(
            f"no room for a KV cache: {budget_bytes} bytes left, one block of {block_size} tokens needs {per_block}"
        )
    return KVBudget(num_blocks=int(n), block_size=block_size)


class BlockPool:
    """Free-list allocator of block ids (host side) plus the slots' block tables (device side)."""

    def __init__(self, budget: KVBudget, slots: int, max_blocks_per_slot: int, device: torch.device) -> None:
        self.block_size = budget.block_size
        self.num_blocks = budget.num_blocks
        self._free = list(range(budget.num_blocks - 1, 0, -1))  # block 0 is the padding rows' scratch
        self._owned: dict[int, list[int]] = {}
        self.max_blocks_per_slot = max_blocks_per_slot
        # one extra row: the padding slot, all zeros
        self.tables = torch.zeros((slots + 1, max_blocks_per_slot), dtype=torch.int32, device=device)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def can_reserve(self, tokens: int) -> bool:
        n = self.blocks_for(tokens)
        return n <= self.max_blocks_per_slot and n <= len(self._free)

    def reserve(self, slot: int, tokens: int) -> list[int]:
        if slot in self._owned:
            raise ValueError(f"slot {slot} already holds KV blocks")
        n = self.blocks_for(tokens)
        if not self.can_reserve(tokens):
            raise MemoryError(f"{n} KV blocks wanted, {len(self._free)} free")
        blocks = [self._free.pop() for _ in range(n)]
        self._owned[slot] = blocks
        row = torch.zeros(self.max_blocks_per_slot, dtype=torch.int32)
        row[:n] = torch.tensor(blocks, dtype=torch.int32)
        self.tables[slot].copy_(row)
        return blocks

    def release(self, slot: int) -> None:
        blocks = self._owned.pop(slot, None)
        if blocks:
            self._free.extend(reversed(blocks))
            self.tables[slot].zero_()
