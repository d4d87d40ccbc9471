"""Which shared files the bot reads (bot.files), and how they reach the user's turn."""

from __future__ import annotations

from bot.domain import SharedFile
from bot.files import decode_text, unread_notice, with_files, worth_reading
from bot.texts import say


def test_text_files_within_the_limit_are_worth_reading_and_nothing_else() -> None:
    assert worth_reading("notes.md", "", 100, 1000)
    assert worth_reading("data", "text/csv", 100, 1000)
    assert worth_reading("main.py", "application/octet-stream", 100, 1000)
    assert not worth_reading("notes.md", "", 1001, 1000), "over the limit"
    assert not worth_reading("notes.md", "", 10, 0), "0 turns reading off"
    assert not worth_reading("report.pdf", "application/pdf", 100, 1000)
    assert not worth_reading("diagram.svg", "image/svg+xml", 100, 1000), "a picture, even as text"


def test_only_utf8_without_nul_is_text() -> None:
    assert decode_text("한글 text".encode()) == "한글 text"
    assert decode_text(b"\xef\xbb\xbfbom") == "bom"
    assert decode_text("naïve".encode("latin-1")) is None
    assert decode_text(b"a\x00b") is None


def test_files_follow_the_text_and_the_unread_ones_get_one_sentence_in_the_users_language() -> None:
    files = [SharedFile("a.txt", 3, text="abc\n"), SharedFile("b.pdf", 9), SharedFile("c.png", 9, image=True)]
    assert with_files("look", files) == (
        "look\n\n[file: a.txt]\nabc\n[end of file: a.txt]\n\n[file not read: b.pdf]\n\n[image not read: c.png]"
    )
    assert unread_notice(files, "ko", limit=16_000) == (
        f"{say('files.not_text', 'ko', names='b.pdf', kb=16)} {say('files.image', 'ko', names='c.png')}"
    )
    assert unread_notice(files[:1], "en", limit=16_000) is None
