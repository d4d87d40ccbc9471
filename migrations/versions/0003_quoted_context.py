"""user turns keep the earlier messages they reply to (messages.quoted)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("quoted", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "quoted")  # ALTER TABLE DROP COLUMN (SQLite ≥ 3.35), no table copy
