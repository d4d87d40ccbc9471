"""Files shared with a message: which ones the bot reads, and how they reach the prompt.

Adapters ask ``worth_reading`` before downloading a file and ``decode_text`` after, and hand the core a
``SharedFile`` per file. Text files (UTF-8 text, code, Markdown, CSV, … within ``chat.max_file_bytes``) are added to
the user's turn with their names, so they are stored with it and counted in the token budget like any text; other
files and images are named to the model as not read, and the user gets one sentence saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from bot.domain import SharedFile
from bot.texts import Lang, say

TEXT_EXTENSIONS = frozenset(
    {
        ".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini",
        ".cfg", ".conf", ".log", ".xml", ".html", ".css", ".sql", ".sh", ".py", ".js", ".ts", ".tsx", ".jsx",
        ".java", ".kt", ".go", ".rs", ".rb", ".php", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".swift", ".scala",
        ".r", ".lua", ".pl", ".tex", ".diff", ".patch",
    }
)  # fmt: skip
TEXT_MIMETYPES = frozenset({"application/json", "application/xml", "application/x-yaml", "application/sql"})
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".heic", ".tif", ".tiff", ".svg"}
)


def is_image(name: str, mimetype: str) -> bool:
    return mimetype.startswith("image/") or _extension(name) in IMAGE_EXTENSIONS


def worth_reading(name: str, mimetype: str, size: int, limit: int) -> bool:
    """Whether a file looks like text and is small enough to download and read."""
    if limit <= 0 or size > limit or is_image(name, mimetype):
        return False
    return mimetype.startswith("text/") or mimetype in TEXT_MIMETYPES or _extension(name) in TEXT_EXTENSIONS


def decode_text(data: bytes) -> str | None:
    """The file's text if it is UTF-8 (a BOM is dropped) and holds no NUL; None for anything else."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def with_files(text: str, files: Sequence[SharedFile]) -> str:
    """The user's text followed by each file: a text file's contents under its name, any other file's name."""
    blocks = [text] if text else []
    for file in files:
        if file.text is not None:
            blocks.append(f"[file: {file.name}]\n{file.text.rstrip()}\n[end of file: {file.name}]")
        elif file.image:
            blocks.append(f"[image not read: {file.name}]")
        else:
            blocks.append(f"[file not read: {file.name}]")
    return "\n\n".join(blocks)


def unread_notice(files: Sequence[SharedFile], lang: Lang, *, limit: int) -> str | None:
    """One sentence naming the files the bot did not read (None when it read them all)."""
    others = [f.name for f in files if f.text is None and not f.image]
    images = [f.name for f in files if f.image]
    sentences = []
    if others:
        sentences.append(say("files.not_text", lang, names=", ".join(others), kb=max(1, limit // 1000)))
    if images:
        sentences.append(say("files.image", lang, names=", ".join(images)))
    return " ".join(sentences) or None


def _extension(name: str) -> str:
    return PurePosixPath(name.lower()).suffix
