"""The batched decoder decodes each row exactly as ``model.generate`` would decode it alone (float32, greedy)."""

from __future__ import annotations

import torch

from bot.domain import GenerationParams
from inference.decoder import SlotRequest
from inference.demo_model import FAQ, SYSTEM_PROMPT, chat_ids
from inference.hf_decoder import HFBatchDecoder
from inference.loading import LoadedModel

QUESTIONS = [FAQ[3][0], FAQ[6][0], "Tell me a story about a cat", "회의는 언제예요?", FAQ[11][0], "xyz 123"]
LENGTH = 24


def prompt_ids(loaded: LoadedModel, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    return chat_ids(loaded.tokenizer, messages, generation_prompt=True)


def reference(loaded: LoadedModel, ids: list[int], repetition_penalty: float) -> list[int]:
    prompt = torch.tensor([ids])
    out = loaded.model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=LENGTH,
        repetition_penalty=repetition_penalty,
    )
    return until_stop(loaded, [int(t) for t in out[0, len(ids) :]])


def until_stop(loaded: LoadedModel, tokens: list[int]) -> list[int]:
    """The tokens up to and including the first terminator (generate pads after it)."""
    stops = set(loaded.model.generation_config.eos_token_id)
    ends = [i for i, token in enumerate(tokens) if token in stops]
    return tokens[: ends[0] + 1] if ends else tokens


def run_batched(
    loaded: LoadedModel, prompts: list[list[int]], params: GenerationParams
) -> dict[int, list[int]]:
    """Requests join one by one between steps, with different prompt lengths, and leave when done."""
    decoder = HFBatchDecoder(loaded.model, capacity=4)
    outputs: dict[int, list[int]] = {}
    waiting = list(enumerate(prompts))
    while waiting or decoder.active_slots:
        if waiting and decoder.can_admit(len(waiting[0][1]), LENGTH):
            slot, ids = waiting.pop(0)
            outputs[slot] = [decoder.admit(SlotRequest(slot, tuple(ids), params))]
        for slot, token in decoder.step().items():
            outputs[slot].append(token)
            if len(outputs[slot]) == LENGTH:
                decoder.release(slot)
    return outputs


def test_batched_greedy_equals_generate_token_for_token(demo_loaded: LoadedModel) -> None:
    prompts = [prompt_ids(demo_loaded, q) for q in QUESTIONS]
    greedy = GenerationParams(do_sample=False, repetition_penalty=1.0, max_new_tokens=LENGTH)
    outputs = run_batched(demo_loaded, prompts, greedy)
    for slot, ids in enumerate(prompts):
        assert until_stop(demo_loaded, outputs[slot]) == reference(demo_loaded, ids, 1.0), QUESTIONS[slot]


def test_repetition_penalty_matches_generate(demo_loaded: LoadedModel) -> None:
    prompts = [prompt_ids(demo_loaded, q) for q in QUESTIONS[:4]]
    greedy = GenerationParams(do_sample=False, repetition_penalty=1.3, max_new_tokens=LENGTH)
    outputs = run_batched(demo_loaded, prompts, greedy)
    for slot, ids in enumerate(prompts):
        assert until_stop(demo_loaded, outputs[slot]) == reference(demo_loaded, ids, 1.3), QUESTIONS[slot]


def test_release_is_idempotent_and_frees_the_slot(demo_loaded: LoadedModel) -> None:
    decoder = HFBatchDecoder(demo_loaded.model, capacity=1)
    ids = tuple(prompt_ids(demo_loaded, FAQ[0][0]))
    decoder.admit(SlotRequest(0, ids, GenerationParams(do_sample=False)))
    assert not decoder.can_admit(len(ids), 8)
    decoder.release(0)
    decoder.release(0)
    assert decoder.can_admit(len(ids), 8) and decoder.step() == {}
