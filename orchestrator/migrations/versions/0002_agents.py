"""Rig agents: who serves which rig, and when each was last seen (idle agents included), so a queued
campaign can say whether anything will pick it up.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("rig", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_agents_rig", "agents", ["rig"])


def downgrade() -> None:
    op.drop_table("agents")
