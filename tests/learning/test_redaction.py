"""Redaction, table-driven: every sample loses its secret, ordinary text is left alone, and the dataset file written
from a store full of personal data holds none of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.domain import Author, ConversationKey, Role
from bot.learning.dataset import DatasetOptions, build_dataset
from bot.learning.redaction import PiiKind, find_pii, passes_luhn, placeholder, redact
from bot.store.conversations import ConversationStore
from tests.learning.pii_samples import ALL_SAMPLES, NOT_PII, Sample

SAMPLES: list[Sample] = [sample for samples in ALL_SAMPLES.values() for sample in samples]


def _has_hangul(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)


@pytest.mark.parametrize("kind", list(ALL_SAMPLES))
def test_each_kind_has_30_korean_and_english_samples(kind: str) -> None:
    samples = ALL_SAMPLES[kind]
    assert len(samples) >= 30
    assert any(_has_hangul(sentence) for _, sentence, _ in samples)
    assert any(not _has_hangul(sentence) for _, sentence, _ in samples)
    assert len({secret for _, _, secret in samples}) == len(samples)


@pytest.mark.parametrize(
    ("kind", "sentence", "secret"), SAMPLES, ids=[f"{k.value}-{i}" for i, (k, _, _) in enumerate(SAMPLES)]
)
def test_secret_is_replaced(kind: PiiKind, sentence: str, secret: str) -> None:
    redacted = redact(sentence)
    assert secret not in redacted
    assert placeholder(kind) in redacted
    digits = re.sub(r"\D", "", secret)
    if len(digits) >= 7:
        assert digits not in re.sub(r"\D", "", redacted)


@pytest.mark.parametrize("text", NOT_PII)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text
    assert find_pii(text) == []


def test_redaction_is_idempotent() -> None:
    for _, sentence, _ in SAMPLES:
        once = redact(sentence)
        assert redact(once) == once


def test_dataset_file_holds_no_personal_data(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    """Users ask with personal data in their questions, the bot repeats it: neither side reaches the files."""
    for index, (_, sentence, secret) in enumerate(SAMPLES):
        key = ConversationKey("discord", "guild", f"channel-{index % 7}")
        user = Author(id=f"user-{index % 5}", display_name=f"User {index % 5}")
        sqlite_store.add_message(key, Role.USER, sentence, author=user)
        sqlite_store.add_message(key, Role.ASSISTANT, f"확인했어요: {secret} / Noted: {sentence}")
    extra = tmp_path / "uploaded.jsonl"
    extra.write_text(
        '{"messages": [{"role": "user", "content": "내 번호 010-2468-1357 기억해"}, '
        '{"role": "assistant", "content": "010-2468-1357 기억할게요"}]}\n',
        encoding="utf-8",
    )
    options = DatasetOptions(system_prompt="system", eval_fraction=0.2, extra_datasets=(extra,))
    files = build_dataset(sqlite_store, options, tmp_path / "out")

    written = files.train_path.read_text(encoding="utf-8") + files.eval_path.read_text(encoding="utf-8")
    assert files.train_examples + files.eval_examples == len(SAMPLES) + 1
    assert "010-2468-1357" not in written
    digits_written = re.sub(r"\D", "", written)
    for _, _, secret in SAMPLES:
        assert secret not in written
        digits = re.sub(r"\D", "", secret)
        if len(digits) >= 9:
            assert digits not in digits_written
    assert find_pii(written) == []


def test_card_numbers_need_the_luhn_check() -> None:
    """Every card sample is a valid number; the same digits with another check digit are not taken for a card."""
    for _, sentence, secret in ALL_SAMPLES["card"]:
        wrong = secret[:-1] + str((int(secret[-1]) + 1) % 10)
        assert PiiKind.CARD not in {kind for kind, _ in find_pii(sentence.replace(secret, wrong))}, wrong
    assert redact("카드 아님: 20261205143000 (로그 시각)") == "카드 아님: 20261205143000 (로그 시각)"
    assert passes_luhn("20261205143005")  # a timestamp that happens to pass the card check
    assert redact("결제 시각 20261205143005") == "결제 시각 20261205143005"
    assert redact("Diners 3056-930902-5904 expired") == "Diners [CARD] expired"
