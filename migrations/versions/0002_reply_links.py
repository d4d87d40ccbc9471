"""bot replies name the user turn they answer (messages.reply_to_id)

So that /forget-me delete:yes removes the bot's replies to a user's turns along with the turns.

A plain indexed column rather than a foreign key: SQLite can add a foreign key only inline with ALTER TABLE (which
SQLAlchemy does not reflect with its ON DELETE), or by copying and dropping ``messages``, which with foreign keys on
cascades into ``feedback``. Nothing is lost without it: a reply is always stored after its turn, so its
``reply_to_id`` is smaller than its own id and cannot be handed out again (SQLite reuses only the largest rowid,
PostgreSQL never); once the turn is deleted the id simply matches nothing.

Existing replies are linked to the nearest user turn before them in their conversation. That is how the chat service
stores them (a user turn, then its reply); where two people wrote at once in one channel, an old reply may be linked to
the other person's turn. New replies are linked exactly when they are stored.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BACKFILL = """
UPDATE messages SET reply_to_id = (
    SELECT MAX(earlier.id) FROM messages AS earlier
    WHERE earlier.conversation_id = messages.conversation_id
      AND earlier.role = 'user'
      AND earlier.id < messages.id
)
WHERE role = 'assistant'
"""


def upgrade() -> None:
    op.add_column("messages", sa.Column("reply_to_id", sa.Integer(), nullable=True))
    op.create_index("ix_messages_reply_to_id", "messages", ["reply_to_id"], unique=False)
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.drop_index("ix_messages_reply_to_id", table_name="messages")
    op.drop_column("messages", "reply_to_id")  # ALTER TABLE DROP COLUMN (SQLite ≥ 3.35), no table copy
