"""Streaming text never splits a multi-byte character and adds up to the full decode; tokenizers' DecodeStream
(the fast tokenizer's road) gives the same pieces as the hand-written detokenizer, on Korean and emoji too."""

from __future__ import annotations

import pytest

from inference.detokenize import Detokenizer, IncrementalDetokenizer, StreamDetokenizer, detokenizer_for
from inference.loading import LoadedModel

TEXT = "안녕하세요! hanbot은 팀 챗봇이에요 🙂 emoji와 한국어, English 섞어서. 👨‍👩‍👧 家族 café"
KINDS = ("stream", "hand-written")


def make(kind: str, loaded: LoadedModel) -> Detokenizer:
    tokenizer = loaded.tokenizer

    def decode(chunk: object) -> str:
        return str(tokenizer.decode(list(chunk), skip_special_tokens=True))  # type: ignore[call-overload]

    if kind == "stream":
        return StreamDetokenizer(tokenizer.backend_tokenizer, decode)
    return IncrementalDetokenizer(decode)


def pieces_of(detokenizer: Detokenizer, ids: list[int]) -> list[str]:
    return [detokenizer.push(token) for token in ids] + [detokenizer.flush()]


@pytest.mark.parametrize("kind", KINDS)
def test_korean_and_emoji_stream_in_whole_characters(demo_loaded: LoadedModel, kind: str) -> None:
    ids = demo_loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    pieces = pieces_of(make(kind, demo_loaded), ids)
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 5  # it streams, it does not wait for the end


def test_the_stream_gives_the_hand_written_pieces(demo_loaded: LoadedModel) -> None:
    ids = demo_loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert pieces_of(make("stream", demo_loaded), ids) == pieces_of(make("hand-written", demo_loaded), ids)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unfinished_character_at_the_end_stays_out(demo_loaded: LoadedModel, kind: str) -> None:
    ids = demo_loaded.tokenizer("챗봇 🙂", add_special_tokens=False)["input_ids"]
    whole = demo_loaded.tokenizer.decode(ids[:-1], skip_special_tokens=True).rstrip("\ufffd")
    assert "".join(pieces_of(make(kind, demo_loaded), ids[:-1])) == whole


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_are_skipped(demo_loaded: LoadedModel, kind: str) -> None:
    tokenizer = demo_loaded.tokenizer
    ids = tokenizer("Hello", add_special_tokens=False)["input_ids"] + [
        tokenizer.convert_tokens_to_ids("<|eot_id|>")
    ]
    assert "".join(pieces_of(make(kind, demo_loaded), ids)) == "Hello"


def test_the_engine_uses_the_stream_for_a_fast_tokenizer(demo_loaded: LoadedModel) -> None:
    chosen = detokenizer_for(demo_loaded.tokenizer, lambda ids: "")
    assert isinstance(chosen, StreamDetokenizer)
    assert isinstance(detokenizer_for(object(), lambda ids: ""), IncrementalDetokenizer)
