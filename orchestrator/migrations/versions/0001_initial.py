"""The campaign store: campaigns (with agent claims), rounds, conditions, replicates, events,
control requests, e-stop latches.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen copies of the types at this revision (a migration never imports today's models)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def Utc() -> sa.DateTime:  # noqa: N802 - reads like a type in the column lists
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status_by", sa.String(200), nullable=False),
        sa.Column("status_at", Utc(), nullable=False),
        sa.Column("protocol_yaml", sa.Text(), nullable=False),
        sa.Column("protocol_path", sa.Text(), nullable=False),
        sa.Column("rig_yaml", sa.Text(), nullable=False),
        sa.Column("rig_path", sa.Text(), nullable=False),
        sa.Column("rig_name", sa.String(200), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("updated_at", Utc(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", Utc(), nullable=True),
        sa.Column("claimed_at", Utc(), nullable=True),
        sa.Column("queued_for_rig", sa.String(200), nullable=True),
    )
    op.create_index("ix_campaigns_status", "campaigns", ["status"])
    op.create_index("ix_campaigns_queued_for_rig", "campaigns", ["queued_for_rig"])

    op.create_table(
        "rounds",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(64), sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.String(100), nullable=False),
        sa.Column("bounds", sa.JSON(), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("bounds_next", sa.JSON(), nullable=True),
        sa.Column("planned_at", Utc(), nullable=False),
        sa.Column("finished_at", Utc(), nullable=True),
        sa.UniqueConstraint("campaign_id", "round_index", name="uq_rounds_campaign_round"),
    )

    op.create_table(
        "conditions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("condition_index", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("prediction", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("median_loss", sa.Float(), nullable=True),
        sa.Column("mad", sa.Float(), nullable=True),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rates", sa.JSON(), nullable=True),
        sa.Column("started_at", Utc(), nullable=True),
        sa.Column("finished_at", Utc(), nullable=True),
        sa.UniqueConstraint("campaign_id", "round_index", "condition_index", name="uq_conditions_key"),
        sa.ForeignKeyConstraint(
            ["campaign_id", "round_index"],
            ["rounds.campaign_id", "rounds.round_index"],
            name="fk_conditions_round",
        ),
    )

    op.create_table(
        "replicates",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("condition_index", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("replicate_index", sa.Integer(), nullable=False),
        sa.Column("absorbance", sa.LargeBinary(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reject_reason", sa.Text(), nullable=True),
        sa.Column("set_aside", sa.Boolean(), nullable=False),
        sa.Column("set_aside_reason", sa.Text(), nullable=True),
        sa.Column("clock_s", sa.Float(), nullable=False),
        sa.Column("at", Utc(), nullable=False),
        sa.UniqueConstraint(
            "campaign_id",
            "round_index",
            "condition_index",
            "attempt",
            "replicate_index",
            name="uq_replicates_key",
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id", "round_index", "condition_index"],
            ["conditions.campaign_id", "conditions.round_index", "conditions.condition_index"],
            name="fk_replicates_condition",
        ),
    )

    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(64), sa.ForeignKey("campaigns.id"), nullable=True),
        sa.Column("at", Utc(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_campaign_id", "events", ["campaign_id", "id"])

    op.create_table(
        "control_requests",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(64), sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", Utc(), nullable=False),
        sa.Column("handled_at", Utc(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
    )
    op.create_index("ix_control_requests_pending", "control_requests", ["campaign_id", "handled_at"])

    op.create_table(
        "estops",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("rig", sa.String(200), nullable=True),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("latched_at", Utc(), nullable=False),
        sa.Column("cleared_at", Utc(), nullable=True),
        sa.Column("cleared_by", sa.String(200), nullable=True),
        sa.Column("clear_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_estops_active", "estops", ["cleared_at"])


def downgrade() -> None:
    for table in ("estops", "control_requests", "events", "replicates", "conditions", "rounds", "campaigns"):
        op.drop_table(table)
