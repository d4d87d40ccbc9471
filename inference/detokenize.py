"""Turning a growing list of token ids into text pieces, never splitting a multi-byte character.

Byte-level tokens can end in the middle of a UTF-8 sequence (one Hangul syllable is three bytes); a decode then
shows U+FFFD. A piece is released only once it decodes cleanly, from a window that starts a few tokens back (so
tokenizers that strip a leading space at the start of a decode stay honest).

A fast tokenizer (a ``tokenizers`` backend: Llama-3's, the demo model's) does this in ``tokenizers.DecodeStream``
(``StreamDetokenizer``, about 1 µs a token). ``IncrementalDetokenizer`` is the same rule over any ``decode``
function, for a tokenizer without that backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

Decode = Callable[[Sequence[int]], str]
_INCOMPLETE = "\ufffd"


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is still incomplete)."""
        ...

    def flush(self) -> str:
        """The text still held back when the stream ends (an incomplete character stays out)."""
        ...


def detokenizer_for(tokenizer: Any, decode: Decode) -> Detokenizer:
    """``StreamDetokenizer`` over the tokenizer's ``tokenizers`` backend, else ``IncrementalDetokenizer(decode)``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return StreamDetokenizer(backend, decode)
    return IncrementalDetokenizer(decode)


class StreamDetokenizer:
    """``tokenizers.DecodeStream`` (special tokens skipped). ``decode`` serves only ``flush``: the few tokens held
    back at the end, decoded after the last piece released, as ``IncrementalDetokenizer.flush`` does."""

    def __init__(self, tokenizer: Tokenizer, decode: Decode) -> None:
        self._tokenizer = tokenizer
        self._decode = decode
        self._stream = DecodeStream(skip_special_tokens=True)
        self._released: list[int] = []  # the tokens of the last piece released
        self._held: list[int] = []  # the tokens since

    def push(self, token_id: int) -> str:
        self._held.append(token_id)
        piece = self._stream.step(self._tokenizer, token_id)
        if piece is None:
            return ""
        self._released, self._held = self._held, []
        return str(piece)

    def flush(self) -> str:
        if not self._held:
            return ""
        before = self._decode(self._released)
        after = self._decode(self._released + self._held)
        self._held = []
        return after[len(before) :].rstrip(_INCOMPLETE) if len(after) > len(before) else ""


class IncrementalDetokenizer:
    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens already turned into released text

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :].rstrip(_INCOMPLETE) if len(after) > len(before) else ""
