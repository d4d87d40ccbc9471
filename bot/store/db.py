"""Database engine and migrations.

SQLite gets WAL, ``synchronous=NORMAL``, foreign keys, a busy timeout, and ``BEGIN IMMEDIATE`` for every
transaction, so concurrent writers queue instead of losing updates. PostgreSQL runs the same code through psycopg 3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

_log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15_000
MIGRATION_LOCK_ID = 0x68616E62  # "hanb": the PostgreSQL advisory lock that serialises migrations


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # plain URL: use psycopg 3 rather than psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo=echo)
    return create_engine(parsed, echo=echo, pool_pre_ping=True, hide_parameters=True)


def _sqlite_engine(url: Any, *, echo: bool) -> Engine:
    database = url.database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        hide_parameters=True,  # message text never reaches a log through an SQL error or echo
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself
        cursor = dbapi_conn.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config interpolates "%": a password holding one (percent-encoded in the URL) must be doubled
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    config.set_main_option("sqlalchemy.url", url)
    return config


def migrate(engine: Engine, revision: str = "head", *, data_dir: Path | None = None) -> None:
    """Bring the database schema to ``revision`` (run at every start; a no-op when already there).

    ``data_dir``: the bot's data directory, for migrations that rewrite stored file paths (0004)."""
    config = alembic_config(engine)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # processes starting together take turns (held until the commit below); SQLite's BEGIN IMMEDIATE does
            # the same there
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        config.attributes["connection"] = connection
        config.attributes["data_dir"] = data_dir
        command.upgrade(config, revision)
        connection.commit()
    _log.info("database schema at %s (%s)", revision, engine.url.get_backend_name())  # never the URL
