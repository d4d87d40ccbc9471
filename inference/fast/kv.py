"""Paged KV memory: one preallocated pool of fixed-size blocks for all layers, a block table per slot.

A request reserves every block it can need (prompt + max_new_tokens) when it is admitted, so a running request never
runs out of memory; a request that does not fit now waits (``can_reserve`` is False) instead of failing.
Block 0 is never handed out: padded rows of a batch write there.

Prefix reuse: full blocks outlive their request as a cache keyed by content (adapter, token ids, position), so the
next turn of a conversation, or another channel with the same system prompt, starts after the KV it already has.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections import OrderedDict
from collections.abc import Sequence
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
    kv_fp8: bool = False,
) -> KVBudget:
    """How many blocks to allocate: from ``budget_bytes``, else from free GPU memory less ``reserve_bytes``.

    Never more than every slot at full context needs. On CPU without a budget: exactly that.
    """
    per_block = kv_bytes_per_token(spec, kv_fp8) * block_size
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


def kv_bytes_per_token(spec: LlamaSpec, fp8: bool = False) -> int:
    """K and V of one token over all layers: 2-byte elements, or (FP8) 1-byte ones plus a float32 scale per head."""
    if not fp8:
        return spec.kv_bytes_per_token
    return spec.num_layers * 2 * spec.num_kv_heads * (spec.head_dim + 4)


class BlockPool:
    """Block ids (host side) plus the slots' block tables (device side), with prefix reuse.

    A block is free, held (by one or more slots: a shared prefix is refcounted), or cached: unused but holding the
    KV of a known token sequence, found again by ``prefix_key`` (a hash chain over the adapter id, each block's
    token ids and its parent's key, so the key fixes the block's position too). Cached blocks count as free: when
    a reservation needs more blocks than the free list has, the least recently used cached blocks are evicted,
    deepest first (a slot's blocks are cached last block first), so a conversation's shared beginning outlives its
    tail. Every decision is made from token ids alone, in call order: tensor-parallel ranks replaying rank 0's
    calls end with the same pools. ``reuse=False``: nothing is cached, a released block is free at once.
    """

    def __init__(
        self,
        budget: KVBudget,
        slots: int,
        max_blocks_per_slot: int,
        device: torch.device,
        *,
        reuse: bool = True,
    ) -> None:
        self.block_size = budget.block_size
        self.num_blocks = budget.num_blocks
        self.reuse = reuse
        self._free = list(range(budget.num_blocks - 1, 0, -1))  # block 0 is the padding rows' scratch
        self._owned: dict[int, list[int]] = {}
        self._refs = [0] * budget.num_blocks
        self._cached: dict[bytes, int] = {}  # prefix key -> block holding that KV
        self._key_of: dict[int, bytes] = {}  # block -> its prefix key (cached or held)
        self._evictable: OrderedDict[int, None] = (
            OrderedDict()
        )  # cached and unused, least recently used first
        self._chains: dict[int, list[bytes]] = {}  # slot -> keys of its full blocks known so far
        self.evictions = 0  # cached blocks handed out again, since start
        self.max_blocks_per_slot = max_blocks_per_slot
        # one extra row: the padding slot, all zeros
        self.tables = torch.zeros((slots + 1, max_blocks_per_slot), dtype=torch.int32, device=device)

    @property
    def free_blocks(self) -> int:
        """Blocks a reservation can have now: the free ones and the cached ones nobody uses (evicted on demand)."""
        return len(self._free) + len(self._evictable)

    @property
    def cached_blocks(self) -> int:
        """Blocks whose KV can be found again (held or not)."""
        return len(self._cached)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def can_reserve(self, tokens: int) -> bool:
        n = self.blocks_for(tokens)
        return n <= self.max_blocks_per_slot and n <= self.free_blocks

    def match(self, prompt_ids: Sequence[int], lora: str | None) -> list[int]:
        """The cached blocks that hold the KV of the prompt's longest known beginning, leaving at least one prompt
        token to compute (its logits give the first new token)."""
        if not self.reuse:
            return []
        found: list[int] = []
        key = root_key(lora)
        bs = self.block_size
        for i in range((len(prompt_ids) - 1) // bs):
            key = prefix_key(key, prompt_ids[i * bs : (i + 1) * bs])
            block = self._cached.get(key)
            if block is None:
                break
            found.append(block)
        return found

    def reserve(
        self, slot: int, tokens: int, prompt_ids: Sequence[int] = (), lora: str | None = None
    ) -> tuple[list[int], int]:
        """Blocks for ``tokens`` tokens of ``slot``: the cached beginning of ``prompt_ids`` first (shared), then new
        ones. Returns the slot's block list and how many of its first blocks already hold the prompt's KV."""
        if slot in self._owned:
            raise ValueError(f"slot {slot} already holds KV blocks")
        n = self.blocks_for(tokens)
        prefix = self.match(prompt_ids, lora)[:n]
        taken_from_cache = sum(1 for b in prefix if b in self._evictable)
        fresh = n - len(prefix)
        if n > self.max_blocks_per_slot or fresh > self.free_blocks - taken_from_cache:
            raise MemoryError(f"{fresh} new KV blocks wanted, {self.free_blocks - taken_from_cache} free")
        for b in prefix:
            self._hold(b)
        blocks = prefix + [self._take_free() for _ in range(fresh)]
        self._owned[slot] = blocks
        self._chains[slot] = [self._key_of[b] for b in prefix]
        row = torch.zeros(self.max_blocks_per_slot, dtype=torch.int32)
        row[:n] = torch.tensor(blocks, dtype=torch.int32)
        self.tables[slot].copy_(row)
        return blocks, len(prefix)

    def remember(self, slot: int, token_ids: Sequence[int], lora: str | None) -> None:
        """Make the slot's full blocks among ``token_ids`` (tokens whose KV is written, from position 0) findable.

        A block whose content another block already caches stays private (freed on release)."""
        if not self.reuse or slot not in self._chains:
            return
        blocks, chain = self._owned[slot], self._chains[slot]
        bs = self.block_size
        key = chain[-1] if chain else root_key(lora)
        for i in range(len(chain), min(len(token_ids) // bs, len(blocks))):
            key = prefix_key(key, token_ids[i * bs : (i + 1) * bs])
            chain.append(key)
            block = blocks[i]
            if block not in self._key_of and key not in self._cached:
                self._cached[key] = block
                self._key_of[block] = key

    def release(self, slot: int) -> None:
        blocks = self._owned.pop(slot, None)
        self._chains.pop(slot, None)
        if not blocks:
            return
        for b in reversed(blocks):  # the tail becomes evictable first: a shared beginning outlives it
            self._refs[b] -= 1
            if self._refs[b] > 0:
                continue
            if b in self._key_of:
                self._evictable[b] = None
            else:
                self._free.append(b)
        self.tables[slot].zero_()

    def forget_cached(self) -> None:
        """Drop every cached prefix (the weights the KV came from changed); held blocks stay with their slots."""
        for b in self._evictable:
            self._free.append(b)
        self._evictable.clear()
        self._cached.clear()
        self._key_of.clear()
        self._chains.clear()  # what the running slots hold now is stale: never cached

    def _hold(self, block: int) -> None:
        self._refs[block] += 1
        self._evictable.pop(block, None)

    def _take_free(self) -> int:
        if self._free:
            block = self._free.pop()
        else:  # evict the least recently used cached block
            block, _ = self._evictable.popitem(last=False)
            del self._cached[self._key_of.pop(block)]
            self.evictions += 1
        self._refs[block] = 1
        return block


def root_key(lora: str | None) -> bytes:
    """The chain's start: the adapter the KV was computed with (None: the base model)."""
    return hashlib.sha256(b"base" if lora is None else b"lora:" + lora.encode()).digest()


def prefix_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The key of a block holding ``tokens`` right after the blocks ``parent`` names."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()
