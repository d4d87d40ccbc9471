"""A reply cut into Slack messages: each piece ≤ 4,000 characters once converted to mrkdwn.

The cuts come from the platform-neutral splitter (paragraph, sentence incl. Korean endings, word; never inside a
character; code fences closed and reopened); the pieces are converted afterwards. Escaping (``&`` → ``&amp;``) makes
text longer, so the splitter counts characters the way they will be sent, with room kept for what conversion adds.
"""

from __future__ import annotations

from adapters.slack.mrkdwn import to_mrkdwn
from bot.textsplit import split_message

LIMIT = 4000  # chat.update rejects longer text (msg_too_long); longer posts are cut the same way
_ROOM = 200  # what conversion may add: spaces by inline code, nested bullet indents, rules


def slack_size(text: str) -> int:
    """Characters once escaped for Slack."""
    return len(text) + 4 * text.count("&") + 3 * (text.count("<") + text.count(">"))


def render_pieces(markdown: str, limit: int = LIMIT) -> list[str]:
    """The mrkdwn messages that show ``markdown``, in order, none longer than ``limit``."""
    budget = limit - _ROOM if limit > 2 * _ROOM else limit // 2
    rendered: list[str] = []
    for piece in split_message(markdown, budget, size=slack_size):
        text = to_mrkdwn(piece)
        if len(text) <= limit:
            rendered.append(text)
        elif limit >= 4 * _ROOM:  # conversion added more than the room kept: cut this piece again, smaller
            rendered.extend(render_pieces(piece, limit // 2))
        else:  # pathological input (hundreds of rules in a row): a plain cut keeps the limit
            rendered.extend(text[i : i + limit] for i in range(0, len(text), limit))
    return [text for text in rendered if text.strip()]
