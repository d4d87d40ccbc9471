"""Markdown (what the model writes) to Slack mrkdwn (what chat.postMessage and chat.update render).

Handles what models actually produce: **bold**, *italic*, ~~strike~~, `code`, fenced code, [links](url), headings,
bullet lists, rules. Works on partial text too (a stream in progress): an unclosed fence is closed, an unclosed
marker is left as it is. ``&``, ``<`` and ``>`` are escaped as Slack requires.

Model text never pings anyone (a prompt injection could ask it to): only http(s) and mailto targets become links
(``[hi](!channel)`` is shown as the text "hi (!channel)", never ``<!channel|hi>``); ``<!here>``, ``<@U…>`` and
friends are escaped into plain text; ``@channel``, ``@here`` and ``@everyone`` get a zero-width space after the ``@``.

Slack only applies a format when the markers stand next to spaces or punctuation, which Korean text rarely gives
(``**중요**합니다``, ```foo``를``): inline code gets a space on a side that touches a letter, bold/italic/strike get
a zero-width space there.
"""

from __future__ import annotations

import re
from collections.abc import Callable

ZWSP = "\u200b"
_RULE = "──────────"

_FENCE_LINE = re.compile(r"^ {0,3}(```|~~~)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_HR = re.compile(r"^ {0,3}([-*_])(?:\s*\1){2,}\s*$")
_INLINE_CODE = re.compile(r"(`+)(?=[^`])(.+?)(?<=[^`])\1(?!`)")

_SAFE_TARGET = re.compile(r"^(?:https?://|mailto:)[^\s|]+$", re.IGNORECASE)
_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]+)\]\((\S+?)(?:\s+&quot;[^\n]*?&quot;|\s+\"[^\n]*?\")?\)")
_AUTOLINK = re.compile(r"&lt;((?:https?|mailto):[^\s&]+(?:&amp;[^\s&]+)*)&gt;")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_ITALIC_STAR = re.compile(r"(?<!\*)\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?!\*)")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
# Formats this module wrote, marked with sentinels until their neighbours are known: bold, italic, strike.
_MARKS = {"\x01": "*", "\x02": "_", "\x03": "~"}
_MARKED = re.compile(r"([\x01\x02\x03])(.+?)\1")

# Placeholders keep converted pieces out of later rules: \x00<index>\x00.
_HOLE = re.compile(r"\x00(\d+)\x00")
_CONTROL = re.compile(r"[\x00-\x03]")


def to_mrkdwn(markdown: str) -> str:
    """Convert Markdown to Slack mrkdwn."""
    markdown = _CONTROL.sub("", markdown)
    out: list[str] = []
    code: list[str] | None = None  # lines of the open code block, None outside one
    fence = ""
    for line in markdown.split("\n"):
        opener = _FENCE_LINE.match(line)
        if code is None:
            if opener:
                code, fence = [], opener.group(1)
                continue
            out.append(_convert_line(line))
        elif opener and opener.group(1) == fence and not line.strip()[3:].strip():
            out.append(_code_block(code))
            code = None
        else:
            code.append(line)
    if code is not None:  # unclosed (still streaming, or the model forgot): close it
        out.append(_code_block(code))
    return "\n".join(out)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code_block(lines: list[str]) -> str:
    # Slack shows a language tag as text, so none is written; the content stays as it is, escaped.
    return "```\n" + escape("\n".join(lines)) + "\n```"


def _convert_line(line: str) -> str:
    if _HR.match(line):
        return _RULE
    heading = _HEADING.match(line)
    if heading:
        inner = _BOLD.sub(lambda m: m.group(1) or m.group(2), heading.group(1))
        return _inline(f"**{inner}**") if inner else ""
    bullet = _BULLET.match(line)
    if bullet:
        indent = bullet.group(1).replace("\t", "    ")
        level = len(indent) // 2
        mark = "•" if level % 2 == 0 else "◦"
        return "    " * level + f"{mark} " + _inline(bullet.group(2))
    return _inline(line)


def _inline(text: str) -> str:
    """Inline formatting of one line outside code blocks."""
    holes: list[str] = []

    def hold(value: str) -> str:
        holes.append(value)
        return f"\x00{len(holes) - 1}\x00"

    parts: list[str] = []
    pos = 0
    for match in _INLINE_CODE.finditer(text):
        before = text[pos : match.start()]
        parts.append(_format_text(before, hold))
        code = "`" + escape(match.group(2).strip() or match.group(2)) + "`"
        if before and before[-1].isalnum():
            code = " " + code
        after = text[match.end() : match.end() + 1]
        if after and after.isalnum():
            code += " "
        parts.append(hold(code))
        pos = match.end()
    parts.append(_format_text(text[pos:], hold))
    joined = "".join(parts)
    return _HOLE.sub(lambda m: holes[int(m.group(1))], joined)


def _format_text(text: str, hold: Callable[[str], str]) -> str:
    if not text:
        return text
    text = escape(text)
    text = _BROADCAST.sub(f"@{ZWSP}\\1", text)
    text = _IMAGE_OR_LINK.sub(lambda m: hold(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK.sub(lambda m: hold(f"<{m.group(1)}>"), text)
    text = _BOLD.sub(lambda m: "\x01" + (m.group(1) or m.group(2)) + "\x01", text)
    text = _ITALIC_STAR.sub("\x02\\1\x02", text)
    text = _STRIKE.sub("\x03\\1\x03", text)
    return _place_marks(text)


def _link(target: str, label: str) -> str:
    """A Slack link for a web or mail address; anything else (``!channel``, ``@U1``, ``#C1``) stays plain text."""
    target = target.replace("|", "%7C")
    if _SAFE_TARGET.match(target):
        return f"<{target}|{label}>"
    return f"{label} ({target})"


def defuse(markdown: str) -> str:
    """For text Slack renders itself (native streams): a zero-width space after every ``<``, so the model can
    write no ``<!channel>`` or ``<@U…>``. Character by character, so a growing text keeps its prefix."""
    return markdown.replace("<", "<" + ZWSP)


def _place_marks(text: str) -> str:
    """Write the format markers, with a zero-width space where a letter touches one (Slack needs a boundary)."""

    def place(match: re.Match[str]) -> str:
        start, end = match.start(), match.end()
        mark = _MARKS[match.group(1)]
        left = ZWSP if start > 0 and match.string[start - 1].isalnum() else ""
        right = ZWSP if end < len(match.string) and match.string[end].isalnum() else ""
        return f"{left}{mark}{_place_marks(match.group(2))}{mark}{right}"

    return _MARKED.sub(place, text)
