"""the quality gate's records: each run's checks (finetune_runs.gate), and whether a version passed them
(lora_versions.gate_passed; versions promoted before the gate did not, so their held-out sets block nothing)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("finetune_runs", sa.Column("gate", sa.JSON(), nullable=True))
    op.add_column(
        "lora_versions", sa.Column("gate_passed", sa.Boolean(), server_default=sa.false(), nullable=False)
    )


def downgrade() -> None:
    op.drop_column("lora_versions", "gate_passed")
    op.drop_column("finetune_runs", "gate")
