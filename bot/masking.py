"""Credentials out of what people read: URLs with a password (``scheme://user:pass@host``) or a secret in their query
(``?password=…``, ``?api_key=…``) are shown masked in check-config, error messages and every log line."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "api_key",
        "apikey",
        "access_token",
        "sslpassword",
    }
)

# user:password@ inside any scheme://… (stops at whitespace, quotes and the end of the authority)
_URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s:/@'\"]*:)(?P<password>[^\s'\"]*)@(?=[^\s/@'\"]*)"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:"
    + "|".join(sorted(SECRET_QUERY_KEYS, key=len, reverse=True))
    + r")=)(?P<value>[^&\s'\"#]+)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """The URL with its password and secret query values replaced by ``***`` (anything else is kept)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    netloc = parts.netloc
    if "@" not in netloc and not _QUERY_SECRET.search("?" + parts.query):
        return url  # nothing to hide (and sqlite:///path keeps its slashes)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_text(text: str) -> str:
    """Every URL credential and secret query value inside free text masked (for error messages and logs)."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", text)


class MaskCredentials(logging.Filter):
    """A handler filter: the formatted message (and any traceback) with URL credentials masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            masked_exc = mask_text(text)
            if masked_exc != text:
                record.exc_text = masked_exc
        return True
