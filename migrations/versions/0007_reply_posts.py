"""reply_posts: the platform messages that show each bot reply (for 👍/👎 reactions on them)

A reply is stored once but shown as one or more platform messages (Discord rolls over at 2,000 characters, Slack at
4,000). A reaction names one of those messages; ``reply_posts`` leads from it to the stored reply, so the reaction
becomes a ``feedback`` row. Deleting the reply (``/reset``, ``/forget-me``, pruning) deletes its posts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 16:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reply_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("platform_message_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("platform", "platform_message_id", name="uq_reply_post"),
    )
    op.create_index("ix_reply_posts_message_id", "reply_posts", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_reply_posts_message_id", table_name="reply_posts")
    op.drop_table("reply_posts")
