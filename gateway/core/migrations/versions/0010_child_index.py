"""Linked history by keyed index: keyed hashes of what identifies a child, per referral, and which
index keys the index was built for (issue 15)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 18:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # New tables only: referrals is not rebuilt on SQLite. Referrals stored before this revision are
    # not in the index until `referral-gateway reindex` has run; until then the referral page finds
    # earlier referrals by opening them, as before (no child's history is missing meanwhile).
    op.create_table(
        "child_index",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("referral_id", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("organisation", sa.String(length=64), nullable=True),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"], name=op.f("fk_child_index_referral_id_referrals")),
        sa.PrimaryKeyConstraint("kind", "digest", "referral_id", name=op.f("pk_child_index")),
    )
    op.create_index(op.f("ix_child_index_referral_id"), "child_index", ["referral_id"], unique=False)
    op.create_index(op.f("ix_child_index_recent"), "child_index", ["kind", "digest", "received_at"], unique=False)
    op.create_table(
        "child_index_builds",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("referrals", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_child_index_builds")),
    )


def downgrade() -> None:
    # Only an index: the sealed content it was made from stays, and `reindex` makes it again.
    op.drop_table("child_index_builds")
    op.drop_index(op.f("ix_child_index_recent"), table_name="child_index")
    op.drop_index(op.f("ix_child_index_referral_id"), table_name="child_index")
    op.drop_table("child_index")
