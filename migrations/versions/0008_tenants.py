"""tenants: each fine-tune run, LoRA version, trial and fine-tune audit event belongs to a learning scope

A team (Discord guild, Slack workspace) can have a fine-tuned version of its own (bot.learning.tenants). Runs,
versions and trials carry the scope they belong to: ``shared`` (the one shared version, as before) or the team id
(``discord:GUILD``, ``slack:T…``). Every existing row belongs to the shared version, so an install that upgrades
serves and trains exactly as it did. Fine-tune audit events get the same column (opt-outs and other events that are
about no version keep NULL).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 17:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCOPED = ("finetune_runs", "lora_versions", "lora_trials")


def upgrade() -> None:
    for table in SCOPED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("tenant", sa.String(length=64), nullable=False, server_default="shared")
            )
            batch.create_index(f"ix_{table}_tenant", ["tenant"])
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("tenant", sa.String(length=64), nullable=True))
        batch.create_index("ix_audit_events_tenant", ["tenant"])
    op.execute("UPDATE audit_events SET tenant = 'shared' WHERE action LIKE 'finetune.%'")


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_index("ix_audit_events_tenant")
        batch.drop_column("tenant")
    for table in reversed(SCOPED):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_tenant")
            batch.drop_column("tenant")
