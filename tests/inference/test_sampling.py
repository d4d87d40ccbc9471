"""The shared sampler agrees with transformers' logits processors and honours each row's parameters."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from bot.domain import GenerationParams
from inference.sampling import (
    RowParams,
    apply_repetition_penalty,
    history_mask,
    mark_seen,
    sample_next,
    top_p_filter,
)

CPU = torch.device("cpu")


def test_repetition_penalty_matches_transformers() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    history = torch.tensor([[1, 5, 7, 5], [0, 2, 49, 3]])
    seen = torch.zeros(2, 50, dtype=torch.bool).scatter(1, history, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    got = apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3]))
    assert torch.allclose(got, expected)


def test_top_p_keeps_the_same_tokens_as_transformers() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 40) * 3
    probs = torch.softmax(logits, dim=-1)
    kept = top_p_filter(probs, torch.tensor([0.9, 0.5, 0.1])) > 0
    for row, top_p in enumerate((0.9, 0.5, 0.1)):
        warped = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), logits[row : row + 1].clone())
        assert torch.equal(kept[row], torch.isfinite(warped[0]))


def test_greedy_rows_take_the_argmax_and_sampled_rows_follow_the_distribution() -> None:
    rows = 4000  # half greedy, half sampled, in one batch
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0001]])).expand(rows, -1)
    greedy = GenerationParams(do_sample=False)
    sampled = GenerationParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0)
    params = RowParams.build([greedy, sampled] * (rows // 2), CPU)
    torch.manual_seed(2)
    draws = sample_next(logits, torch.zeros(rows, 4, dtype=torch.bool), params)
    assert bool((draws[0::2] == 0).all())
    share = torch.bincount(draws[1::2], minlength=4).float() / (rows // 2)
    assert abs(share[0].item() - 0.7) < 0.04 and abs(share[1].item() - 0.2) < 0.04


def test_top_p_cuts_the_tail_and_temperature_sharpens() -> None:
    rows = 2000
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).expand(rows, -1)
    seen = torch.zeros(rows, 3, dtype=torch.bool)
    nucleus = RowParams.build(
        [GenerationParams(temperature=1.0, top_p=0.8, repetition_penalty=1.0)] * rows, CPU
    )
    torch.manual_seed(3)
    assert 2 not in sample_next(logits, seen, nucleus).tolist()
    cold = RowParams.build(
        [GenerationParams(temperature=0.05, top_p=1.0, repetition_penalty=1.0)] * rows, CPU
    )
    assert set(sample_next(logits, seen, cold).tolist()) == {0}


def test_a_seeded_request_draws_the_same_tokens_whatever_shares_its_batch() -> None:
    torch.manual_seed(4)
    logits = torch.randn(3, 30)
    seen = torch.zeros(3, 30, dtype=torch.bool)
    seeded = GenerationParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=42)
    alone = sample_next(logits[1:2], seen[1:2], RowParams.build([seeded], CPU)).item()
    batch = RowParams.build([GenerationParams(), seeded, GenerationParams(do_sample=False)], CPU)
    together = sample_next(logits, seen, batch)[1].item()
    assert alone == together


def test_history_marks_prompt_and_new_tokens() -> None:
    seen = history_mask([3, 3, 7], 10, CPU)
    mark_seen(seen, torch.tensor([9]))
    assert seen[0].nonzero().flatten().tolist() == [3, 7, 9]


def test_row_params_select_and_concat_keep_rows_aligned() -> None:
    a = RowParams.build([GenerationParams(temperature=0.3), GenerationParams(do_sample=False)], CPU)
    b = RowParams.build([GenerationParams(top_p=0.5)], CPU)
    both = a.concat(b).select([2, 0])
    assert both.top_p.tolist() == [0.5, 0.8999999761581421]
    assert both.greedy_rows == [False, False] and not both.all_greedy
