"""Personal data out of training text: each match is replaced by a placeholder naming its kind.

Kinds, in the order they are applied (an earlier, more specific pattern wins over a later, looser one):
platform mentions (``<@U123ABC>``, ``<@!123…>``, ``<#C123|general>``), e-mail addresses, Korean resident
registration numbers (``900101-1234567``), account numbers announced by a word ("계좌", "account", "IBAN"), card
numbers, phone numbers (Korean mobile, Seoul and regional lines, ``+82`` forms, 15xx service numbers, North American
and other ``+`` international forms), account numbers written as dashed digit groups (10 to 16 digits), and bare
platform ids (Discord snowflakes, Slack ``U…``/``C…`` ids, any other run of 10 or more digits).

Numbers are matched with digit lookarounds rather than ``\\b``: Hangul counts as a word character, so
``010-1234-5678로`` must still match. Redaction errs on the side of removing too much: a long number in a chat
message is far more often an id than something the model must learn.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class PiiKind(StrEnum):
    MENTION = "MENTION"
    EMAIL = "EMAIL"
    RRN = "RRN"  # 주민등록번호 / 외국인등록번호
    CARD = "CARD"
    PHONE = "PHONE"
    ACCOUNT = "ACCOUNT"
    ID = "ID"


def placeholder(kind: PiiKind) -> str:
    return f"[{kind.value}]"


def _digits_between(low: int, high: int) -> Callable[[str], bool]:
    def accept(found: str) -> bool:
        return low <= sum(ch.isdigit() for ch in found) <= high

    return accept


def _always(found: str) -> bool:
    return True


@dataclass(frozen=True)
class _Rule:
    """A pattern whose group ``pii`` (or whole match) is replaced when ``accept`` agrees."""

    kind: PiiKind
    pattern: re.Pattern[str]
    accept: Callable[[str], bool] = _always

    def matches(self, text: str) -> list[str]:
        return [found for match in self.pattern.finditer(text) if self.accept(found := _pii_part(match))]

    def apply(self, text: str) -> str:
        return self.pattern.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        found = _pii_part(match)
        if not self.accept(found):
            return match.group(0)
        start = match.start("pii") - match.start() if "pii" in match.re.groupindex else 0
        return match.group(0)[:start] + placeholder(self.kind)


def _pii_part(match: re.Match[str]) -> str:
    if "pii" in match.re.groupindex and match.group("pii") is not None:
        return match.group("pii")
    return match.group(0)


_NOT_DIGIT_BEFORE = r"(?<![0-9])"
_NOT_DIGIT_AFTER = r"(?![0-9])"
_SEP = r"[ .\-]?"

_RULES: tuple[_Rule, ...] = (
    # Slack: <@U123ABC>, <@U123|name>, <#C123|general>, <!subteam^S123|team>; Discord: <@123>, <@!123>, <@&123>, <#123>
    _Rule(PiiKind.MENTION, re.compile(r"<(?:@[!&]?|#|!subteam\^)[A-Za-z0-9]+(?:\|[^>]*)?>")),
    _Rule(
        PiiKind.EMAIL,
        re.compile(r"[A-Za-z0-9._%+\-]+\s?(?:@|＠)\s?[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
    ),
    _Rule(
        PiiKind.RRN,
        re.compile(
            _NOT_DIGIT_BEFORE
            + r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s?[-–]?\s?[1-8][0-9*]{6}"
            + _NOT_DIGIT_AFTER
        ),
    ),
    _Rule(
        PiiKind.ACCOUNT,
        re.compile(
            # digits right after a word that says "account": 계좌 110234567890, acct no. 000123456789
            r"(?i:계좌(?:번호)?|입금|account(?:\s+(?:no\.?|number|#))?|acct\.?(?:\s*(?:no\.?|#))?|a/c|iban)"
            + r"[^\d\n]{0,16}?(?P<pii>(?:[A-Z]{2}\d{2}[ ]?)?\d[\d \-]{5,30}\d)"
            + _NOT_DIGIT_AFTER
        ),
    ),
    _Rule(
        PiiKind.CARD,
        re.compile(
            _NOT_DIGIT_BEFORE
            + r"(?:\d{4}[ \-]?\d{4}[ \-]?\d{4}[ \-]?\d{4}"  # 16 digits (19-digit runs are ids)
            + r"|\d{4}[ \-]?\d{6}[ \-]?\d{4,5})"  # Amex 15, Diners 14
            + _NOT_DIGIT_AFTER
        ),
    ),
    _Rule(
        PiiKind.PHONE,
        re.compile(
            r"(?:"
            # +82 10 1234 5678, +82-2-123-4567, +82 (0)10-1234-5678, 0082-10-...
            + r"(?:\+|00)82[ \-]?(?:\(0\))?[ \-]?0?(?:1[016789]|2|[3-6][1-5]|70)[ .\-)]*\d{3,4}[ .\-]?\d{4}"
            # 010-1234-5678, 010 1234 5678, 01012345678, 02-123-4567, 031-123-4567, 070-1234-5678, (02) 123-4567
            + r"|"
            + _NOT_DIGIT_BEFORE
            + r"\(?0(?:1[016789]|2|[3-6][1-5]|70|50\d)\)?[ .\-]?\d{3,4}[ .\-]?\d{4}"
            + _NOT_DIGIT_AFTER
            # 1588-1234, 1644-0000 (service numbers)
            + r"|"
            + _NOT_DIGIT_BEFORE
            + r"1[5-9]\d{2}-\d{4}"
            + _NOT_DIGIT_AFTER
            # +1 (415) 555-0132, +44 20 7946 0958, +81-3-1234-5678
            + r"|\+\d{1,3}[ .\-]?\(?\d{1,4}\)?(?:[ .\-]?\d{2,4}){2,3}"
            + _NOT_DIGIT_AFTER
            # (415) 555-0132, 415-555-0132, 415.555.0132
            + r"|"
            + _NOT_DIGIT_BEFORE
            + r"\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}"
            + _NOT_DIGIT_AFTER
            + r")"
        ),
    ),
    _Rule(
        PiiKind.ACCOUNT,
        # grouped digits: 110-123-456789, 123456-78-901234, 3333-01-1234567, 352-1234-5678-93 (dates hold 8)
        re.compile(_NOT_DIGIT_BEFORE + r"\d{2,6}-\d{2,6}-\d{2,7}(?:-\d{1,3})?" + _NOT_DIGIT_AFTER),
        accept=_digits_between(10, 16),
    ),
    _Rule(
        PiiKind.ID,
        re.compile(
            # Discord snowflakes and any other run of 10+ digits
            _NOT_DIGIT_BEFORE
            + r"\d{10,}"
            + _NOT_DIGIT_AFTER
            # Slack ids: U/W/C/G/D/T/B/S + 8-11 upper-case letters or digits, at least one digit
            + r"|(?<![A-Za-z0-9])[UWCGDTBS](?=[A-Z0-9]*\d)[A-Z0-9]{8,11}(?![A-Za-z0-9])"
        ),
    ),
)


def redact(text: str) -> str:
    """The text with every piece of personal data replaced by ``[KIND]``."""
    for rule in _RULES:
        text = rule.apply(text)
    return text


def find_pii(text: str) -> list[tuple[PiiKind, str]]:
    """What ``redact`` would remove, rule by rule (for tests and for counting; never logged)."""
    found: list[tuple[PiiKind, str]] = []
    for rule in _RULES:
        found.extend((rule.kind, item) for item in rule.matches(text))
        text = rule.apply(text)
    return found
