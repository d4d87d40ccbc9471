"""Splitting a reply into messages that fit a platform's length limit (Discord 2000, Slack 4000).

Cuts fall on a paragraph break, then a line break, then a sentence end (Korean ``다.``/``요.``, ``?``, ``!``, English
punctuation), then a space; only a run of text with no such place is cut between two characters, and even then never
inside a grapheme (a Hangul syllable written as jamo, an emoji ZWJ sequence, a skin tone or variation selector, a
regional-indicator flag). A code fence open at a cut is closed at the end of the piece and reopened, with its
language tag, at the start of the next one. Those two fence lines are the only text added: each ``Piece`` keeps them
apart from its ``body``, and the bodies concatenate back to the input.

A fence is a line whose first non-blank characters are three backticks; each such line opens or closes one.
``StreamSplitter`` does the same for text that arrives in chunks (a streamed reply).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

FENCE = "```"
MIN_LIMIT = 40  # room for a reopened fence, a closing fence and some text
MAX_LANG_TAG = 20  # a longer language tag is shortened when the fence is reopened
_CLOSE_RESERVE = "\n" + FENCE

Size = Callable[[str], int]


def utf16_size(text: str) -> int:
    """Length in UTF-16 code units: what a limit counted by a JavaScript client sees (astral chars count 2)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


@dataclass(frozen=True)
class Piece:
    """One message: ``prefix`` (a reopened fence) + ``body`` (a slice of the input) + ``suffix`` (a closing fence)."""

    body: str
    prefix: str = ""
    suffix: str = ""

    @property
    def text(self) -> str:
        return self.prefix + self.body + self.suffix


def split_message(text: str, limit: int, *, size: Size = len) -> list[str]:
    """The messages to send for ``text``, none longer than ``limit`` (measured by ``size``). Empty text: none."""
    return [piece.text for piece in split_pieces(text, limit, size=size)]


def split_pieces(text: str, limit: int, *, size: Size = len) -> list[Piece]:
    _check_limit(limit)
    pieces: list[Piece] = []
    start, opener = 0, None
    while start < len(text):
        prefix = _reopen(opener)
        end = _fitting_end(text, start, prefix, limit, size)
        if end is None:
            body = text[start:]
            opener = _fence_state(prefix + body)
            pieces.append(Piece(body, prefix, _close(body, opener)))
            break
        cut = choose_cut(text, start, end)
        body = text[start:cut]
        opener = _fence_state(prefix + body)
        pieces.append(Piece(body, prefix, _close(body, opener)))
        start = cut
    return pieces


class StreamSplitter:
    """Splits text that arrives in chunks: ``feed`` returns the pieces that are complete (no later text can change
    them), ``current`` is the piece still growing (with a closing fence when one is open), ``finish`` the last one.

    The pieces are the same kind as ``split_pieces`` makes: each ≤ ``limit``, fences balanced, bodies adding up to
    everything fed.
    """

    def __init__(self, limit: int, *, size: Size = len) -> None:
        _check_limit(limit)
        self._limit = limit
        self._size = size
        self._buf = ""  # text of the growing piece (after its prefix)
        self._opener: str | None = None  # fence open at the start of the growing piece
        self._total = 0

    @property
    def text_length(self) -> int:
        """Characters fed so far."""
        return self._total

    def feed(self, chunk: str) -> list[Piece]:
        self._buf += chunk
        self._total += len(chunk)
        done: list[Piece] = []
        while True:
            prefix = _reopen(self._opener)
            end = _fitting_end(self._buf, 0, prefix, self._limit, self._size)
            if end is None:
                return done
            cut = choose_cut(self._buf, 0, end)
            body = self._buf[:cut]
            opener = _fence_state(prefix + body)
            done.append(Piece(body, prefix, _close(body, opener)))
            self._buf = self._buf[cut:]
            self._opener = opener

    def current(self) -> Piece:
        """The growing piece as it should be shown now (may have an empty body)."""
        prefix = _reopen(self._opener)
        opener = _fence_state(prefix + self._buf)
        return Piece(self._buf, prefix, _close(self._buf, opener))

    def finish(self) -> Piece | None:
        """The last piece, or None when nothing is left (or only the reopened fence would be)."""
        if not self._buf:
            return None
        piece = self.current()
        self._buf = ""
        return piece


# choosing where to cut

_PARAGRAPH = re.compile(r"\n[ \t\r]*\n[ \t\r\n]*")
_LINE = re.compile(r"\n")
# a sentence end: punctuation (closing quotes/brackets allowed) then blanks; or Korean 다./요. directly before Hangul
_SENTENCE = re.compile(r"[.!?…。！？][\"'”’)\]」』]*[ \t]+|(?<=[다요])\.(?=[\uac00-\ud7a3])")
_WORD = re.compile(r"[ \t\u3000]+")


def choose_cut(text: str, start: int, end: int) -> int:
    """Where to end the piece that starts at ``start`` and may run to ``end`` (exclusive, ``end`` < len(text)).

    The latest paragraph, line, sentence or word boundary in the second half of the window, in that order of
    preference; else the latest such boundary anywhere in the window; else the latest grapheme boundary.
    """
    window = text[start:end]
    half = start + (end - start) // 2
    found: list[list[int]] = []
    for pattern in (_PARAGRAPH, _LINE, _SENTENCE, _WORD):
        spots = [start + m.end() for m in pattern.finditer(window)]
        spots = [p for p in spots if start < p <= end and _can_cut(text, p)]
        found.append(spots)
        late = [p for p in spots if p > half]
        if late:
            return late[-1]
    anywhere = [spots[-1] for spots in found if spots]
    if anywhere:
        return max(anywhere)
    for p in range(end, start, -1):
        if _can_cut(text, p):
            return p
    return end  # one grapheme (or backtick run) longer than the limit: cut it, the limit comes first


def _can_cut(text: str, p: int) -> bool:
    if p >= len(text):
        return True
    if text[p - 1] == "`" and text[p] == "`":
        return False  # never split a run of backticks: a fence would lose its marker
    return is_grapheme_boundary(text, p)


def _fitting_end(text: str, start: int, prefix: str, limit: int, size: Size) -> int | None:
    """None when the rest of ``text`` fits in one piece; else the furthest end that leaves room for a closing fence."""
    rest = text[start:]
    used = size(prefix) + size(rest)
    if used + len(_CLOSE_RESERVE) <= limit:
        return None
    if used <= limit and used + len(_close(rest, _fence_state(prefix + rest))) <= limit:
        return None
    budget = limit - size(prefix) - len(_CLOSE_RESERVE)
    total, i = 0, start
    while i < len(text):
        total += size(text[i])
        if total > budget:
            break
        i += 1
    return max(i, start + 1)


# code fences


def _fence_state(text: str) -> str | None:
    """The opening fence line ("```lang") still open at the end of ``text``, or None when every fence is closed."""
    opener: str | None = None
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped.startswith(FENCE):
            continue
        if opener is None:
            opener = _opener_line(stripped)
        else:
            opener = None
    return opener


def _opener_line(stripped: str) -> str:
    info = stripped.lstrip("`").strip()
    lang = info.split()[0][:MAX_LANG_TAG].replace("`", "") if info else ""
    return FENCE + lang


def _reopen(opener: str | None) -> str:
    return "" if opener is None else opener + "\n"


def _close(body: str, opener: str | None) -> str:
    if opener is None:
        return ""
    return FENCE if body.endswith("\n") or not body else "\n" + FENCE


def _check_limit(limit: int) -> None:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit {limit} is too small to split messages (at least {MIN_LIMIT})")


# graphemes (the parts of Unicode's extended grapheme cluster rules that matter in chat text)

_ZWJ = "\u200d"


def is_grapheme_boundary(text: str, p: int) -> bool:
    """True when a cut between ``text[p-1]`` and ``text[p]`` does not split a user-perceived character."""
    if p <= 0 or p >= len(text):
        return True
    prev, cur = text[p - 1], text[p]
    if prev == "\r" and cur == "\n":
        return False
    if _joins_previous(cur) or prev == _ZWJ:
        return False
    if _hangul_joins(prev, cur):
        return False
    if _is_regional_indicator(cur) and _is_regional_indicator(prev):
        run = 0
        i = p - 1
        while i >= 0 and _is_regional_indicator(text[i]):
            run += 1
            i -= 1
        return run % 2 == 0  # flags pair up from the start of the run
    return True


def _joins_previous(ch: str) -> bool:
    code = ord(ch)
    if ch == _ZWJ or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:  # ZWJ, variation selectors
        return True
    if 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:  # skin tones, emoji tag sequences
        return True
    return unicodedata.category(ch) in ("Mn", "Me", "Mc")  # combining marks (and the keycap U+20E3)


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _hangul_kind(ch: str) -> str:
    code = ord(ch)
    if 0x1100 <= code <= 0x115F or 0xA960 <= code <= 0xA97C:
        return "L"
    if 0x1160 <= code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
        return "V"
    if 0x11A8 <= code <= 0x11FF or 0xD7CB <= code <= 0xD7FB:
        return "T"
    if 0xAC00 <= code <= 0xD7A3:
        return "LV" if (code - 0xAC00) % 28 == 0 else "LVT"
    return ""


def _hangul_joins(prev: str, cur: str) -> bool:
    a, b = _hangul_kind(prev), _hangul_kind(cur)
    if not a or not b:
        return False
    if a == "L":
        return b in ("L", "V", "LV", "LVT")
    if a in ("LV", "V"):
        return b in ("V", "T")
    return b == "T"  # after T or LVT
