"""Next-token sampling for a batch of rows, each with its own generation parameters, in torch operations only.

The rules are ``inference.sampling_spec``'s (the penalty and the greedy rule come from there): per row, repetition
penalty over every token the row has seen (prompt and generated), then greedy (``do_sample`` off or temperature 0)
or temperature, top-p and a draw (no top-k: that is the static decoder's setting). The draw is the
exponential race, argmax(p / E) with E ~ Exp(1), which samples from p without a host round trip. Nothing here reads
a value back to the host; the caller reads the sampled ids once per step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bot.domain import GenerationParams
from inference.sampling_spec import apply_repetition_penalty, is_greedy

_log = logging.getLogger(__name__)

__all__ = [
    "RowParams",
    "apply_repetition_penalty",
    "exponential_noise",
    "history_mask",
    "is_greedy",
    "mark_seen",
    "sample_next",
    "seeded_generator",
    "top_p_filter",
]


@dataclass
class RowParams:
    """The sampling parameters of every row, as device tensors (one entry per row)."""

    temperature: torch.Tensor  # float32; 1.0 on greedy rows
    top_p: torch.Tensor  # float32
    penalty: torch.Tensor  # float32; 1.0 = off
    greedy: torch.Tensor  # bool
    generators: list[torch.Generator | None]  # a row's own generator when its request carries a seed
    greedy_rows: list[bool]  # the same as ``greedy``, on the host (deciding the path must not sync)

    @classmethod
    def build(cls, params: Sequence[GenerationParams], device: torch.device) -> RowParams:
        return cls(
            temperature=torch.tensor(
                [1.0 if is_greedy(p) else p.temperature for p in params], dtype=torch.float32, device=device
            ),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            penalty=torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32, device=device),
            greedy=torch.tensor([is_greedy(p) for p in params], dtype=torch.bool, device=device),
            generators=[seeded_generator(p, device) for p in params],
            greedy_rows=[is_greedy(p) for p in params],
        )

    def select(self, keep: Sequence[int]) -> RowParams:
        """The parameters of rows ``keep``, in that order."""
        rows = torch.tensor(list(keep), dtype=torch.long, device=self.temperature.device)
        return RowParams(
            temperature=self.temperature[rows],
            top_p=self.top_p[rows],
            penalty=self.penalty[rows],
            greedy=self.greedy[rows],
            generators=[self.generators[i] for i in keep],
            greedy_rows=[self.greedy_rows[i] for i in keep],
        )

    def concat(self, other: RowParams) -> RowParams:
        return RowParams(
            temperature=torch.cat([self.temperature, other.temperature]),
            top_p=torch.cat([self.top_p, other.top_p]),
            penalty=torch.cat([self.penalty, other.penalty]),
            greedy=torch.cat([self.greedy, other.greedy]),
            generators=self.generators + other.generators,
            greedy_rows=self.greedy_rows + other.greedy_rows,
        )

    @property
    def all_greedy(self) -> bool:
        return all(self.greedy_rows)


def seeded_generator(params: GenerationParams, device: torch.device) -> torch.Generator | None:
    if params.seed is None or is_greedy(params):
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed)
    return generator


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p`` (the top token always stays)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_above >= top_p[:, None]
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def exponential_noise(
    shape: torch.Size, generators: Sequence[torch.Generator | None], device: torch.device
) -> torch.Tensor:
    noise = torch.empty(shape, dtype=torch.float32, device=device).exponential_()
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row].exponential_(generator=generator)
    return noise


def sample_next(logits: torch.Tensor, seen: torch.Tensor, params: RowParams) -> torch.Tensor:
    """The next token id of every row of ``logits`` [rows, vocab]; ``seen`` [rows, vocab] marks each row's history.

    Returns a long tensor [rows] on the logits' device. Does not update ``seen`` (see ``mark_seen``).
    """
    logits = apply_repetition_penalty(logits.float(), seen, params.penalty)
    greedy_ids = logits.argmax(dim=-1)
    if params.all_greedy:
        return greedy_ids
    probs = torch.softmax(logits / params.temperature[:, None], dim=-1)
    probs = top_p_filter(probs, params.top_p)
    sampled_ids = (probs / exponential_noise(probs.shape, params.generators, probs.device)).argmax(dim=-1)
    return torch.where(params.greedy, greedy_ids, sampled_ids)


def mark_seen(seen: torch.Tensor, tokens: torch.Tensor) -> None:
    """Record each row's new token in its history (in place)."""
    seen.scatter_(1, tokens[:, None], True)


def history_mask(token_ids: Sequence[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """A [1, vocab] bool row with the given token ids marked (a new request's prompt)."""
    mask = torch.zeros((1, vocab_size), dtype=torch.bool, device=device)
    if token_ids:
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=device)
        mask[0, ids.clamp(max=vocab_size - 1)] = True
    return mask
