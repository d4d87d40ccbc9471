"""Turning a growing list of token ids into text pieces, never splitting a multi-byte character.

Byte-level tokens can end in the middle of a UTF-8 sequence (one Hangul syllable is three bytes); the decoder then
shows U+FFFD. A piece is released only once it decodes cleanly. Decoding a window that starts a few tokens back
(``prefix``) keeps tokenizers that strip a leading space at the start of a decode honest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]
_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens already turned into released text

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is still incomplete)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """The text still held back when the stream ends (an incomplete character stays out)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :].rstrip(_INCOMPLETE) if len(after) > len(before) else ""
