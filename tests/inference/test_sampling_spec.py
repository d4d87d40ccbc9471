"""Both samplers follow the one specification of the sampling rules (``inference.sampling_spec``): the reference
agrees with transformers' logits processors, and each sampler's draws over many seeds follow the reference's
distribution (greedy rows exactly), case by case: penalty, temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bot.domain import GenerationParams
from inference.fast.sampler import SlotSampler
from inference.sampling import RowParams, history_mask, sample_next
from inference.sampling_spec import reference_distribution

CPU = torch.device("cpu")
DRAWS = 4000
LOGITS = torch.tensor([2.5, 2.4, -1.0, 1.9, 0.3, -0.2, 1.2, 0.0, -2.5, 0.8, 2.0, -0.7])
SEEN = {0, 2, 7, 10}  # the two best tokens' first and fifth, a negative and a zero logit

CASES: dict[str, tuple[GenerationParams, int]] = {
    "greedy, the penalty moves the top": (GenerationParams(do_sample=False, repetition_penalty=1.3), 0),
    "temperature 0 is greedy": (GenerationParams(temperature=0.0, repetition_penalty=1.0), 0),
    "plain softmax": (GenerationParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0), 0),
    "penalty, temperature, top-p": (GenerationParams(temperature=0.7, top_p=0.8, repetition_penalty=1.2), 0),
    "hot and narrow": (GenerationParams(temperature=1.8, top_p=0.5, repetition_penalty=1.1), 0),
    "top-p keeps the top token alone": (GenerationParams(temperature=1.0, top_p=0.01), 0),
    "top-k, then top-p": (GenerationParams(temperature=1.0, top_p=0.9, repetition_penalty=1.1), 3),
}


def draw_hf(params: GenerationParams, top_k: int) -> list[int]:
    if top_k:
        pytest.skip("top-k is the static decoder's setting; the hf sampler has none")
    rows = RowParams.build([GenerationParams(**{**vars(params), "seed": i}) for i in range(DRAWS)], CPU)
    seen = history_mask(sorted(SEEN), LOGITS.numel(), CPU).expand(DRAWS, -1)
    return sample_next(LOGITS.expand(DRAWS, -1).clone(), seen, rows).tolist()


def draw_fast(params: GenerationParams, top_k: int) -> list[int]:
    sampler = SlotSampler(DRAWS, LOGITS.numel(), CPU, top_k=top_k)
    for slot in range(DRAWS):
        sampler.configure(
            slot, GenerationParams(**{**vars(params), "seed": slot}), torch.tensor(sorted(SEEN))
        )
    return sampler.sample(LOGITS.expand(DRAWS, -1).clone(), torch.arange(DRAWS)).tolist()


SAMPLERS: dict[str, Callable[[GenerationParams, int], list[int]]] = {"hf": draw_hf, "fast": draw_fast}


@pytest.mark.parametrize("case", CASES)
def test_the_reference_is_what_transformers_computes(case: str) -> None:
    params, top_k = CASES[case]
    expected = reference_distribution(LOGITS, SEEN, params, top_k=top_k)
    history = torch.tensor([sorted(SEEN)])
    z = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(history, LOGITS[None].clone())
    if params.do_sample and params.temperature > 0:
        z = TemperatureLogitsWarper(params.temperature)(history, z)
        if top_k:
            z = TopKLogitsWarper(top_k)(history, z)
        z = TopPLogitsWarper(params.top_p)(history, z)
        assert torch.allclose(torch.softmax(z[0].double(), -1), expected, atol=1e-6)
    else:
        assert expected[z[0].argmax()] == 1.0


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("case", CASES)
def test_each_sampler_draws_from_the_reference(sampler: str, case: str) -> None:
    params, top_k = CASES[case]
    expected = reference_distribution(LOGITS, SEEN, params, top_k=top_k)
    tokens = SAMPLERS[sampler](params, top_k)
    counts = torch.bincount(torch.tensor(tokens), minlength=LOGITS.numel()).double() / len(tokens)
    outside = {t for t in tokens if expected[t] == 0}
    assert not outside, f"drew {outside}, which the rules exclude"
    distance = 0.5 * float((counts - expected).abs().sum())  # total variation
    assert distance < 0.04, (counts.tolist(), expected.tolist())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_sampler_that_breaks_a_rule_fails_the_check(sampler: str) -> None:
    """The check can fail: without the penalty, the draws do not follow the penalised reference."""
    params, top_k = CASES["penalty, temperature, top-p"]
    unpenalised = GenerationParams(**{**vars(params), "repetition_penalty": 1.0})
    tokens = SAMPLERS[sampler](unpenalised, top_k)
    counts = torch.bincount(torch.tensor(tokens), minlength=LOGITS.numel()).double() / len(tokens)
    expected = reference_distribution(LOGITS, SEEN, params, top_k=top_k)
    assert 0.5 * float((counts - expected).abs().sum()) > 0.04
