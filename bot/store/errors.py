"""The store's error, for callers outside ``bot/store`` (they never import SQLAlchemy): a database that refuses,
drops the connection or is not there raises ``StoreError``."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

StoreError = SQLAlchemyError  # every SQLAlchemy error (connection, integrity, operational) is one

__all__ = ["StoreError"]
