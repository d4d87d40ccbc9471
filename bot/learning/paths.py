"""How the database names files of the learning loop (LoRA versions): relative to the data directory.

A version folder under the data directory is stored as a POSIX path relative to it (``lora/versions/v3``) and
resolved against the data directory in force when it is used, so the same database works whatever folder a bot
process starts in and wherever the data directory is mounted. A folder outside the data directory (``finetune.
output_dir`` set elsewhere) is stored absolute.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def to_stored(path: Path | str, data_dir: Path) -> str:
    """The form kept in the database for ``path`` (relative to ``data_dir`` when under it, else absolute)."""
    absolute = Path(path).expanduser().resolve()
    try:
        return PurePosixPath(absolute.relative_to(data_dir.resolve())).as_posix()
    except ValueError:
        return str(absolute)


def from_stored(stored: str, data_dir: Path) -> Path:
    """The folder a stored path names, for a bot whose data directory is ``data_dir``."""
    path = Path(stored)
    return path if path.is_absolute() else data_dir.resolve() / path
