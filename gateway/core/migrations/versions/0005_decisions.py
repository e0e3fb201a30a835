"""Coordinators' decisions on report items

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("item_key", sa.String(length=80), nullable=False),
        sa.Column("referral_id", sa.String(length=32), nullable=True),
        sa.Column("decided_by", sa.String(length=32), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("what", sa.String(length=32), nullable=False),
        sa.Column("note", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["decided_by"], ["users.id"], name=op.f("fk_decisions_decided_by_users")),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"], name=op.f("fk_decisions_referral_id_referrals")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
    )
    op.create_index("ix_decisions_item_key", "decisions", ["item_key"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_decisions_item_key", table_name="decisions")
    op.drop_table("decisions")
