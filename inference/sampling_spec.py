"""The sampling rules, written once: what every sampler of the project draws the next token from.

Two samplers implement them, each shaped by its decoder: ``inference.sampling`` (the hf decoder: per-row torch
generators) and ``inference.fast.sampler`` (the static decoder: a counter-based hash, safe inside a CUDA graph).
Both take the greedy rule and the repetition penalty from here, and both are tested against
``reference_distribution`` (tests/inference/test_sampling_spec.py), which transformers' own logits processors
check in turn. For one row with logits ``z`` over the vocabulary, the tokens the row has seen ``H`` (its prompt and
every token it generated) and its ``GenerationParams`` ``p``, in the order transformers applies them:

1. Repetition penalty: for every token t in H, z_t / p.repetition_penalty when z_t > 0, else z_t times it
   (1.0: off).
2. Greedy when p.do_sample is off or p.temperature <= 0: the token of the largest penalised logit.
3. Temperature: q = softmax(z / p.temperature).
4. Top-k (the static decoder's ``top_k`` setting; 0: off): only the k most likely tokens stay, renormalised.
5. Top-p: tokens ranked by q, a token stays while the mass ranked strictly above it is below p.top_p (the most
   likely token always stays), renormalised.
6. The next token is drawn from what is left; a request with p.seed draws the same tokens every time.
"""

from __future__ import annotations

import torch

from bot.domain import GenerationParams


def is_greedy(params: GenerationParams) -> bool:
    """Rule 2: no draw, the most likely token."""
    return not params.do_sample or params.temperature <= 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Rule 1 for a batch: ``logits`` and ``seen`` [rows, vocab], ``penalty`` [rows]. Torch operations only (no
    host synchronisation: the static decoder runs it inside a CUDA graph)."""
    factor = penalty[:, None]
    penalised = torch.where(logits > 0, logits / factor, logits * factor)
    return torch.where(seen, penalised, logits)


def reference_distribution(
    logits: torch.Tensor, seen: set[int], params: GenerationParams, *, top_k: int = 0
) -> torch.Tensor:
    """The probabilities [vocab] (float64) of the next token of one row under the rules above, step by step; a
    one-hot vector when the row is greedy. For tests: the samplers do the same on whole batches, on the device."""
    z = logits.double().clone()
    for token in seen:
        z[token] = (
            z[token] / params.repetition_penalty if z[token] > 0 else z[token] * params.repetition_penalty
        )
    if is_greedy(params):
        return torch.nn.functional.one_hot(z.argmax(), z.numel()).double()
    q = torch.softmax(z / params.temperature, dim=-1)
    order = sorted(range(z.numel()), key=lambda t: -float(q[t]))
    if 0 < top_k < z.numel():
        q[order[top_k:]] = 0.0
        q = q / q.sum()
    above = 0.0
    for token in order:
        if above >= params.top_p:
            q[token] = 0.0
        above += float(q[token])
    return q / q.sum()
