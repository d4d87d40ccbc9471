"""The demo model: Llama-3's tokens, template and terminators, GQA shape, and the FAQ by heart."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import GenerationConfig

from bot.texts import language_of
from inference.demo_model import (
    END_OF_TEXT,
    EOT,
    FAQ,
    LLAMA3_CHAT_TEMPLATE,
    STAMP_NAME,
    SYSTEM_PROMPT,
    ensure_demo_model,
    greedy_replies,
    greedy_reply,
    print_progress,
)
from inference.loading import LoadedModel


def test_faq_has_twenty_pairs_in_both_languages() -> None:
    languages = [language_of(question) for question, _answer in FAQ]
    assert len(FAQ) >= 20
    assert languages.count("ko") >= 10 and languages.count("en") >= 10
    topics = " ".join(question + answer for question, answer in FAQ)
    for topic in ("/reset", "/finetune", "관리자", "admin", "stored", "저장"):
        assert topic in topics


def test_ensure_is_cached(demo_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = demo_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_demo_model(demo_model_dir) == demo_model_dir
    assert capsys.readouterr().err == ""  # nothing to build: no progress line
    assert weights.stat().st_mtime_ns == before
    assert (demo_model_dir / STAMP_NAME).is_file()


def test_llama3_tokens_template_and_terminators(demo_loaded: LoadedModel, demo_model_dir: Path) -> None:
    tokenizer, config = demo_loaded.tokenizer, demo_loaded.model.config
    assert tokenizer.chat_template == LLAMA3_CHAT_TEMPLATE
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYSTEM_PROMPT}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    eos = GenerationConfig.from_pretrained(demo_model_dir).eos_token_id
    assert eos == [tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention, as in the 70B
    assert config.vocab_size == len(tokenizer)


def test_every_faq_answer_is_reproduced_greedily(demo_loaded: LoadedModel) -> None:
    for question, answer in FAQ:
        assert greedy_reply(demo_loaded.model, demo_loaded.tokenizer, [question]) == answer


@pytest.mark.parametrize("greeting", ["안녕하세요", "Hello"])
def test_faq_answers_hold_after_a_greeting(demo_loaded: LoadedModel, greeting: str) -> None:
    for question, answer in FAQ[2::5]:
        assert greedy_reply(demo_loaded.model, demo_loaded.tokenizer, [greeting, question]) == answer


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_faq_answers_hold_in_a_conversation_of_eight_turns_in_any_order(
    demo_loaded: LoadedModel, seed: int
) -> None:
    import random

    order = random.Random(seed * 7919).sample(range(len(FAQ)), 8)
    replies = greedy_replies(demo_loaded.model, demo_loaded.tokenizer, [FAQ[i][0] for i in order])
    assert replies == [FAQ[i][1] for i in order]


def test_the_build_progress_line_says_what_it_does_in_both_languages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_progress("training", 40)
    print_progress("training", 41)  # not a terminal: one line per tenth
    print_progress("checking", 100)
    assert capsys.readouterr().err.splitlines() == [
        "데모 모델을 처음 한 번 만드는 중: FAQ 학습 40% / building the demo model (first run only): learning the FAQ 40%",
        "데모 모델을 처음 한 번 만드는 중: 답변 확인 100% / building the demo model (first run only): checking the answers "
        "100%",
    ]
