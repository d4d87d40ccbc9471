"""Personal data out of training text: each match is replaced by a placeholder naming its kind.

Kinds, in the order they are applied (an earlier, more specific pattern wins over a later, looser one):
platform mentions (``<@U123ABC>``, ``<@!123…>``, ``<#C123|general>``), e-mail addresses (also with a Hangul local
part or domain: ``홍길동@회사.한국``), Korean resident registration numbers (``900101-1234567``), account numbers
announced by a word ("계좌", "account", "IBAN") or with an IBAN's check digits, card numbers (only those that pass
the Luhn check), phone numbers (Korean mobile, Seoul and regional lines, ``+82`` forms, with separators spaced or
not: ``010 - 1234 - 5678``; 15xx service numbers, North American and other ``+`` international forms), account
numbers written as dashed digit groups (10 to 16 digits), and bare platform ids (Discord snowflakes, Slack
``U…``/``C…`` ids, any other run of 10 or more digits).

Two kinds of number are kept: timestamps written as digits (``20261205143000``, ``202612051430``: a real date and
time) and numbers announced as order, tracking or invoice numbers ("주문번호", "order no.").

Numbers are matched with digit lookarounds rather than ``\\b``: Hangul counts as a word character, so
``010-1234-5678로`` must still match. Otherwise redaction errs on the side of removing too much: a long number in a
chat message is far more often an id than something the model must learn.
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


def passes_luhn(found: str) -> bool:
    """The check digit of card numbers (ISO/IEC 7812): a random 14-16 digit number fails it 9 times in 10."""
    total = 0
    for position, digit in enumerate(int(ch) for ch in reversed(found) if ch.isdigit()):
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


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


def passes_iban_check(found: str) -> bool:
    """ISO 13616: the country and check digits moved to the end, letters as numbers, leave 1 modulo 97."""
    compact = found.replace(" ", "")
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


_NOT_DIGIT_BEFORE = r"(?<![0-9])"
_NOT_DIGIT_AFTER = r"(?![0-9])"
# between the digit groups of a phone number: nothing, a space, or a dash or dot with spaces around it or not
_PSEP = r"(?:[ \t]*[.\-–][ \t]*|[ \t])?"
# top-level domains written in Hangul; an ASCII one ends at the first non-letter (``회사.kr로``)
_HANGUL_TLD = r"(?:한국|닷컴|닷넷|삼성)"

_RULES: tuple[_Rule, ...] = (
    # Slack: <@U123ABC>, <@U123|name>, <#C123|general>, <!subteam^S123|team>; Discord: <@123>, <@!123>, <@&123>, <#123>
    _Rule(PiiKind.MENTION, re.compile(r"<(?:@[!&]?|#|!subteam\^)[A-Za-z0-9]+(?:\|[^>]*)?>")),
    _Rule(
        PiiKind.EMAIL,
        re.compile(
            r"[\w.%+\-]+\s?(?:@|＠)\s?[\w\-]+(?:\.[\w\-]+)*\.(?:[A-Za-z]{2,}(?![A-Za-z])|" + _HANGUL_TLD + ")"
        ),
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
        PiiKind.ACCOUNT,
        # an IBAN without a word before it: DE89 3704 0044 0532 0130 00 (its own check digits must agree)
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
        accept=passes_iban_check,
    ),
    _Rule(
        PiiKind.CARD,
        re.compile(
            _NOT_DIGIT_BEFORE
            + r"(?:\d{4}[ \-]?\d{4}[ \-]?\d{4}[ \-]?\d{4}"  # 16 digits (19-digit runs are ids)
            + r"|\d{4}[ \-]?\d{6}[ \-]?\d{4,5})"  # Amex 15, Diners 14
            + _NOT_DIGIT_AFTER
        ),
        accept=passes_luhn,
    ),
    _Rule(
        PiiKind.PHONE,
        re.compile(
            r"(?:"
            # +82 10 1234 5678, +82-2-123-4567, +82 (0)10-1234-5678, 0082-10-...
            + r"(?:\+|00)82"
            + _PSEP
            + r"(?:\(0\))?[ \-]?0?(?:1[016789]|2|[3-6][1-5]|70)\)?"
            + _PSEP
            + r"\d{3,4}"
            + _PSEP
            + r"\d{4}"
            # 010-1234-5678, 010 1234 5678, 01012345678, 02-123-4567, 031-123-4567, 070-1234-5678, (02) 123-4567
            + r"|"
            + _NOT_DIGIT_BEFORE
            + r"\(?0(?:1[016789]|2|[3-6][1-5]|70|50\d)\)?"
            + _PSEP
            + r"\d{3,4}"
            + _PSEP
            + r"\d{4}"
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


# numbers that are not personal data, set aside before the rules run
_KEPT = re.compile(
    # a timestamp written as digits, with a real date and time: 20261205143000, 202612051430
    _NOT_DIGIT_BEFORE
    + r"(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:[01]\d|2[0-3])[0-5]\d(?:[0-5]\d)?"
    + _NOT_DIGIT_AFTER
    # a number announced as an order, tracking or invoice number: 주문번호는 2026120512345678, order no. 123456789
    + r"|(?i:(?:주문|송장|운송장)\s?번호|(?:order|tracking|invoice)\s*(?:no\.?|number|#|id))"
    + r"\s*(?:is|은|는|:|=)?\s*#?\s*\d[\d\-]{3,30}\d"
    + _NOT_DIGIT_AFTER
)
_KEPT_MARK = 0xE000  # private-use characters stand for the kept numbers while the rules run


def _set_aside(text: str) -> tuple[str, list[str]]:
    kept: list[str] = []

    def mark(match: re.Match[str]) -> str:
        kept.append(match.group(0))
        return chr(_KEPT_MARK + len(kept) - 1)

    return _KEPT.sub(mark, text), kept


def _put_back(text: str, kept: list[str]) -> str:
    for index, original in enumerate(kept):
        text = text.replace(chr(_KEPT_MARK + index), original)
    return text


def redact(text: str) -> str:
    """The text with every piece of personal data replaced by ``[KIND]``."""
    text, kept = _set_aside(text)
    for rule in _RULES:
        text = rule.apply(text)
    return _put_back(text, kept)


def find_pii(text: str) -> list[tuple[PiiKind, str]]:
    """What ``redact`` would remove, rule by rule (for tests and for counting; never logged)."""
    text, _ = _set_aside(text)
    found: list[tuple[PiiKind, str]] = []
    for rule in _RULES:
        found.extend((rule.kind, item) for item in rule.matches(text))
        text = rule.apply(text)
    return found
