"""Token sampling on the device, per slot, with no host synchronisation: safe inside a captured CUDA graph.

The rules are ``inference.sampling_spec``'s (the penalty and the greedy rule come from there): per slot, repetition
penalty (over the prompt and every generated token), temperature, top-k, top-p, greedy when ``do_sample`` is off or
the temperature is 0. Randomness comes from a counter-based hash
of (slot seed, token index, token id) rather than from a generator, so a graph replays it correctly, a seeded
request is reproducible whatever else shares its batch, and no generator state has to be captured.
Sampling uses the exponential-race form: argmax(p / E) with E ~ Exp(1) draws from p.
"""

from __future__ import annotations

import logging
import random

import torch

from bot.domain import GenerationParams
from inference.sampling_spec import apply_repetition_penalty, is_greedy

_log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's finaliser on int64 tensors holding 32-bit values (products wrap; the low 32 bits are kept)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


class SlotSampler:
    """Sampling parameters and token history of every slot, as device tensors indexed by slot."""

    def __init__(self, slots: int, vocab_size: int, device: torch.device, top_k: int = 0) -> None:
        self.vocab_size = vocab_size
        self.top_k = top_k if 0 < top_k < vocab_size else 0
        self.temperature = torch.ones(slots, device=device)
        self.top_p = torch.ones(slots, device=device)
        self.penalty = torch.ones(slots, device=device)
        self.greedy = torch.ones(slots, dtype=torch.bool, device=device)
        self.seed = torch.zeros(slots, dtype=torch.int64, device=device)
        self.counter = torch.zeros(slots, dtype=torch.int64, device=device)
        self.seen = torch.zeros((slots, vocab_size), dtype=torch.bool, device=device)
        self._true = torch.ones((), dtype=torch.bool, device=device)

    def configure(self, slot: int, params: GenerationParams, prompt_ids: torch.Tensor) -> None:
        """Set one slot's parameters and history (host writes, done once per request at admission)."""
        greedy = is_greedy(params)
        self.temperature[slot] = 1.0 if greedy else float(params.temperature)
        self.top_p[slot] = float(params.top_p)
        self.penalty[slot] = float(params.repetition_penalty)
        self.greedy[slot] = greedy
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        self.seed[slot] = int(seed) & _MASK32
        self.counter[slot] = 0
        self.seen[slot].zero_()
        self.seen[slot, prompt_ids] = True

    def _uniform(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Uniform (0, 1) per (row, token id), a pure function of the slot's seed, its counter and the id."""
        key = _fmix32((self.seed[rows] * 0x9E3779B1 + self.counter[rows] * 0x85EBCA77 + 0x27D4EB2F) & _MASK32)
        h = _fmix32(key[:, None] ^ ((ids * 0x2C1B3C6D + 0x297A2D39) & _MASK32))
        return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))

    def sample(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Next token for each row of ``logits`` [rows, vocab] (float32) from slot ``rows[i]``; updates history."""
        logits = apply_repetition_penalty(logits, self.seen[rows], self.penalty[rows])
        greedy_tok = logits.argmax(dim=-1)
        scaled = logits / self.temperature[rows][:, None]
        if self.top_k:
            vals, ids = scaled.topk(self.top_k, dim=-1)  # sorted, descending
        else:
            vals, ids = scaled.sort(dim=-1, descending=True)
        probs = vals.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass ranked strictly above each token
        probs = probs.masked_fill(before >= self.top_p[rows][:, None], 0.0)
        race = probs / -torch.log(self._uniform(rows, ids))
        sampled = ids.gather(-1, race.argmax(dim=-1, keepdim=True)).squeeze(-1)
        tokens = torch.where(self.greedy[rows], greedy_tok, sampled)
        self.record(rows, tokens)
        return tokens

    def record(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        self.seen[rows, tokens] = self._true
        self.counter.index_add_(0, rows, torch.ones_like(rows))
