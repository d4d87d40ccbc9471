"""Shared fixtures: databases (SQLite and PostgreSQL, each test its own), the demo model, settings.

The network is closed by pytest-socket except loopback (see pyproject's addopts).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine, migrate


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process (``bot.cli.main``) gets the bot's log handler on the stream pytest gave
    it as stderr; put the root logger back afterwards, so later tests do not log into that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("HANBOT_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def _postgres_available() -> str | None:
    """None when a server answers, else why not."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"no PostgreSQL at {PG_ADMIN_URL}: {type(exc).__name__}"


@pytest.fixture(scope="session")
def postgres_skip_reason() -> str | None:
    reason = _postgres_available()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
    return reason


@pytest.fixture
def postgres_url(postgres_skip_reason: str | None) -> Iterator[str]:
    """A blank PostgreSQL database for one test, dropped afterwards."""
    if postgres_skip_reason:
        pytest.skip(postgres_skip_reason)
    name = f"hanbot_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'test.db').as_posix()}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{(tmp_path / 'test.db').as_posix()}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[ConversationStore]:
    engine = create_db_engine(db_url)
    migrate(engine)
    yield ConversationStore(engine)
    engine.dispose()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[ConversationStore]:
    engine = create_db_engine(sqlite_url)
    migrate(engine)
    yield ConversationStore(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo model, built once by the same builder `hanbot chat --demo` uses (cached under .cache/)."""
    from inference.demo_model import ensure_demo_model

    return ensure_demo_model(REPO / ".cache" / "demo-model")


@pytest.fixture
def settings(tmp_path: Path, demo_model_dir: Path) -> Settings:
    """Settings for a bot on the demo model, on CPU, with a fresh SQLite database."""
    return load_settings(
        data_dir=tmp_path / "data",
        model={"name_or_path": str(demo_model_dir), "dtype": "float32", "device_map": None, "is_demo": True},
        scheduler={"enabled": False},
    )
