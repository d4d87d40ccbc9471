"""LoRA names: finetune_runs.adapter_path becomes finetune_runs.lora_path

"Adapter" is the project's word for a platform (adapters/discord, adapters/slack); the LoRA a run produced is named
``lora`` everywhere (``RunInfo.lora_path``, ``TrainJob.init_lora``). Only the column's name changes: its values
(the version folder, relative to the data directory since 0004) are kept as they are.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 18:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.alter_column("adapter_path", new_column_name="lora_path")


def downgrade() -> None:
    with op.batch_alter_table("finetune_runs") as batch:
        batch.alter_column("lora_path", new_column_name="adapter_path")
