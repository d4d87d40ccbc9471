"""LoRA version folders are stored relative to the data directory (lora_versions.path, finetune_runs.adapter_path)

Before, a version's path was stored as the bot built it: absolute with an absolute data directory, relative to the
bot's working folder with a relative one (the default "data"), so a bot started from another folder could not find
its active version. From now on a folder under the data directory is stored relative to it (``lora/versions/v1``)
and resolved against the data directory in force; a folder outside it stays absolute.

Existing rows, with the data directory of the bot that runs this migration (``bot.store.db.migrate`` hands it in):
- an absolute path under the data directory becomes relative to it;
- a relative path was relative to the working folder of the bot that stored it: when, taken from this process's
  working folder, it lands under the data directory, it becomes relative to it; otherwise, when it has the default
  layout (``…/lora/versions/<name>``) and that folder exists under the data directory, it becomes
  ``lora/versions/<name>``;
- anything else is left as it was (it never pointed anywhere this bot can see).
Without a data directory (``alembic upgrade`` by hand) only the default-layout rule applies to relative paths.
The downgrade writes relative paths back as absolute ones under the data directory (when it is known).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 15:00:00.000000
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = (("lora_versions", "path"), ("finetune_runs", "adapter_path"))


def _data_dir() -> Path | None:
    value = context.config.attributes.get("data_dir")
    return Path(value).expanduser().resolve() if value else None


def _default_layout_tail(path: PurePosixPath) -> PurePosixPath | None:
    """``lora/versions/<name>`` from a path that ends that way."""
    parts = path.parts
    if len(parts) >= 3 and parts[-3:-1] == ("lora", "versions"):
        return PurePosixPath(*parts[-3:])
    return None


def _relative_under(path: Path, data_dir: Path) -> str | None:
    try:
        return PurePosixPath(path.resolve().relative_to(data_dir)).as_posix()
    except ValueError:
        return None


def _new_form(stored: str, data_dir: Path | None) -> str:
    path = Path(stored)
    tail = _default_layout_tail(PurePosixPath(path.as_posix()))
    if data_dir is None:
        return tail.as_posix() if tail is not None and not path.is_absolute() else stored
    under = _relative_under(path if path.is_absolute() else Path.cwd() / path, data_dir)
    if under is not None:
        return under
    if not path.is_absolute() and tail is not None and (data_dir / tail).is_dir():
        return tail.as_posix()
    return stored


def _old_form(stored: str, data_dir: Path | None) -> str:
    path = Path(stored)
    return str(data_dir / path) if data_dir is not None and not path.is_absolute() else stored


def _rewrite(convert: Callable[[str, Path | None], str]) -> None:
    data_dir = _data_dir()
    connection = op.get_bind()
    for table_name, column in _COLUMNS:
        table = sa.table(table_name, sa.column("id", sa.Integer()), sa.column(column, sa.Text()))
        rows = connection.execute(sa.select(table.c.id, table.c[column]).where(table.c[column].is_not(None)))
        for row_id, stored in rows.all():
            changed = convert(stored, data_dir)
            if changed != stored:
                connection.execute(table.update().where(table.c.id == row_id).values({column: changed}))


def upgrade() -> None:
    _rewrite(_new_form)


def downgrade() -> None:
    _rewrite(_old_form)
