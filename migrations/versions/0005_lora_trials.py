"""LoRA trials and candidates: lora_trials, lora_versions.promoted_at, finetune_runs.gpu_sharing

``/finetune try`` serves a candidate version (trained, not promoted) in some channels only; the open trial is a
``lora_trials`` row, so it survives a restart and every bot process serves it. A candidate is a ``lora_versions`` row
whose ``promoted_at`` is empty; every version stored before this migration was promoted, so it gets its
``created_at``. ``finetune_runs.gpu_sharing`` records how the run shared the GPU with serving (``/finetune status``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("lora_versions", sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE lora_versions SET promoted_at = created_at")
    op.add_column("finetune_runs", sa.Column("gpu_sharing", sa.String(length=16), nullable=True))
    op.create_table(
        "lora_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("started_by", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["version_id"], ["lora_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("lora_trials")
    op.drop_column("finetune_runs", "gpu_sharing")  # ALTER TABLE DROP COLUMN (SQLite ≥ 3.35), no table copy
    op.drop_column("lora_versions", "promoted_at")
