"""The message splitter: every piece fits, nothing is lost or split inside a character, fences stay balanced."""

from __future__ import annotations

import re
import string
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.textsplit import Piece, StreamSplitter, split_message, split_pieces, utf16_size

# Sequences that must never be cut: emoji with ZWJ / skin tone / variation selector / keycap / tags, flags,
# Hangul written as conjoining jamo, a letter with combining accents, CRLF.
UNBREAKABLE = [
    "👨\u200d👩\u200d👧\u200d👦",
    "🧑🏻\u200d💻",
    "👍🏽",
    "🇰🇷",
    "🇺🇸",
    "❤️",
    "1️⃣",
    "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    unicodedata.normalize("NFD", "한"),
    unicodedata.normalize("NFD", "글"),
    "e\u0301\u0323",
    "\r\n",
]
KOREAN = st.text(alphabet=st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), min_size=1, max_size=12)
ENGLISH = st.text(alphabet=string.ascii_letters + string.digits + ",'-", min_size=1, max_size=12)
SEPARATORS = st.sampled_from([" ", " ", " ", "다. ", "요. ", "? ", "! ", ". ", "다.", "\n", "\n\n", "\t"])
LONG_WORD = st.text(alphabet=string.ascii_letters + "가나다", min_size=60, max_size=2500)
CODE_LINE = st.text(alphabet=string.ascii_letters + string.digits + " =()[]{}:;.,'\"#", max_size=60)
LANG = st.sampled_from(["", "python", "py", "js", "rust", "c++", "a-very-long-language-tag-name-indeed"])


@st.composite
def code_block(draw: st.DrawFn) -> str:
    lines = draw(st.lists(CODE_LINE, min_size=0, max_size=40))
    indent = draw(st.sampled_from(["", "", "  "]))
    return f"\n{indent}```{draw(LANG)}\n" + "\n".join(lines) + f"\n{indent}```\n"


@st.composite
def chat_text(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    """A reply-like text, and the spans of the unbreakable sequences in it."""
    atoms = draw(
        st.lists(
            st.one_of(
                KOREAN.map(lambda s: (s, False)),
                ENGLISH.map(lambda s: (s, False)),
                SEPARATORS.map(lambda s: (s, False)),
                st.sampled_from(UNBREAKABLE).map(lambda s: (s, True)),
                st.lists(st.sampled_from(UNBREAKABLE), min_size=10, max_size=300).map(lambda r: (r, True)),
                LONG_WORD.map(lambda s: (s, False)),
                code_block().map(lambda s: (s, False)),
            ),
            max_size=80,
        )
    )
    text, spans = "", []
    for atom, unbreakable in atoms:
        for part in (
            atom if isinstance(atom, list) else [atom]
        ):  # a list: a run of emoji with no space between
            if unbreakable:
                spans.append((len(text), len(text) + len(part)))
            text += part
    return text, spans


def fence_lines(text: str) -> int:
    return sum(1 for line in text.split("\n") if line.strip().startswith("```"))


def check_pieces(text: str, spans: list[tuple[int, int]], pieces: list[Piece], limit: int, size=len) -> None:
    assert "".join(p.body for p in pieces) == text
    cut = 0
    previous_closed = False
    for piece in pieces:
        assert piece.body, "empty piece"
        assert size(piece.text) <= limit
        assert fence_lines(piece.text) % 2 == 0, f"unbalanced fences in {piece.text!r}"
        assert piece.suffix in ("", "```", "\n```")
        assert piece.prefix == "" or re.fullmatch(r"```[^\n`]*\n", piece.prefix)
        assert bool(piece.prefix) == previous_closed, "a fence closed at a cut must be reopened after it"
        previous_closed = bool(piece.suffix)
        cut += len(piece.body)
        if cut < len(text):
            inside = [s for s in spans if s[0] < cut < s[1]]
            assert not inside, f"cut at {cut} inside {text[inside[0][0] : inside[0][1]]!r}"


LIMITS = st.one_of(st.integers(min_value=40, max_value=400), st.just(2000))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(sample=chat_text(), limit=LIMITS)
def test_pieces_fit_add_up_and_keep_fences_balanced(
    sample: tuple[str, list[tuple[int, int]]], limit: int
) -> None:
    text, spans = sample
    check_pieces(text, spans, split_pieces(text, limit), limit)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(sample=chat_text(), limit=LIMITS)
def test_utf16_measure_keeps_astral_text_under_the_limit(
    sample: tuple[str, list[tuple[int, int]]], limit: int
) -> None:
    text, spans = sample
    check_pieces(text, spans, split_pieces(text, limit, size=utf16_size), limit, size=utf16_size)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(sample=chat_text(), limit=LIMITS, chunk=st.integers(min_value=1, max_value=50))
def test_streamed_text_splits_with_the_same_guarantees(
    sample: tuple[str, list[tuple[int, int]]], limit: int, chunk: int
) -> None:
    text, spans = sample
    splitter = StreamSplitter(limit)
    pieces: list[Piece] = []
    for i in range(0, len(text), chunk):
        pieces.extend(splitter.feed(text[i : i + chunk]))
        current = splitter.current()
        assert len(current.text) <= limit
        assert fence_lines(current.text) % 2 == 0
    last = splitter.finish()
    if last is not None:
        pieces.append(last)
    check_pieces(text, spans, pieces, limit)


def test_short_text_is_one_piece_and_empty_text_none() -> None:
    assert split_message("안녕하세요!", 2000) == ["안녕하세요!"]
    assert split_message("", 2000) == []


def test_prefers_paragraphs_then_sentences_then_words() -> None:
    para = "첫 문단입니다. " * 5 + "\n\n"
    text = para + "둘째 문단이에요. 정말요? 네! " * 3
    first = split_message(text, len(para) + 20)[0]
    assert first == para

    sentences = "이것은 문장입니다. 이것도 문장이에요. That is English. And this one too."
    pieces = split_message(sentences, 40)
    assert pieces[0] == "이것은 문장입니다. 이것도 문장이에요. ", pieces
    assert "".join(pieces) == sentences

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"
    assert all(p.endswith(" ") or p == split_message(words, 40)[-1] for p in split_message(words, 40))


def test_code_fence_is_closed_and_reopened_with_its_language() -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(100)) + "\n```\n"
    pieces = split_message("Here is code:\n" + code + "Done.", 300)
    assert len(pieces) >= 3
    for piece in pieces[1:-1]:
        assert piece.startswith("```python\n")
        assert piece.rstrip().endswith("```")
    assert all(fence_lines(p) % 2 == 0 for p in pieces)


def test_a_word_longer_than_the_limit_is_cut_between_graphemes() -> None:
    word = "👍🏽" * 100  # 200 code points, no spaces
    pieces = split_message(word, 41)
    assert "".join(pieces) == word
    assert all(len(p) % 2 == 0 and len(p) <= 41 for p in pieces)


@pytest.mark.parametrize("limit", [39, 0, -5])
def test_a_limit_too_small_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="too small"):
        split_message("text", limit)
