"""Streaming text never splits a multi-byte character and adds up to the full decode."""

from __future__ import annotations

from inference.detokenize import IncrementalDetokenizer
from inference.loading import LoadedModel


def test_korean_and_emoji_stream_in_whole_characters(demo_loaded: LoadedModel) -> None:
    tokenizer = demo_loaded.tokenizer
    text = "안녕하세요! hanbot은 팀 챗봇이에요 🙂 emoji와 한국어, English 섞어서."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(
        lambda chunk: tokenizer.decode(list(chunk), skip_special_tokens=True)
    )
    pieces = [detokenizer.push(token) for token in ids]
    pieces.append(detokenizer.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 5  # it streams, it does not wait for the end


def test_special_tokens_are_skipped(demo_loaded: LoadedModel) -> None:
    tokenizer = demo_loaded.tokenizer
    ids = tokenizer("Hello", add_special_tokens=False)["input_ids"] + [
        tokenizer.convert_tokens_to_ids("<|eot_id|>")
    ]
    detokenizer = IncrementalDetokenizer(
        lambda chunk: tokenizer.decode(list(chunk), skip_special_tokens=True)
    )
    assert "".join(detokenizer.push(token) for token in ids) + detokenizer.flush() == "Hello"
