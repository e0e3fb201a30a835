"""Structured answers (not ours, more information, duplicate) and the additional information a
referrer sends back (issue 15)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"  # re-chained onto main's 0010 (linked history) when main was merged in
branch_labels = None
depends_on = None

# The states this revision's code can write that older code does not know.
_NEW_STATES = ("forwarding", "forwarded", "duplicate", "reply")


def upgrade() -> None:
    # New tables only: referrals gains no column (the new states are values of the existing state
    # column), so nothing that foreign keys point at is rebuilt on SQLite.
    op.create_table(
        "answers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("referral_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("answered_by", sa.String(length=32), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("delivery_id", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"], name=op.f("fk_answers_referral_id_referrals")),
        sa.ForeignKeyConstraint(["answered_by"], ["users.id"], name=op.f("fk_answers_answered_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_answers")),
    )
    op.create_index(op.f("ix_answers_referral_id"), "answers", ["referral_id"])
    op.create_table(
        "additional_info",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("referral_id", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_additional_info_referral_id_referrals")
        ),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name=op.f("fk_additional_info_message_id_messages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_additional_info")),
        sa.UniqueConstraint("message_id", name=op.f("uq_additional_info_message_id")),
    )
    op.create_index(op.f("ix_additional_info_referral_id"), "additional_info", ["referral_id"])


def downgrade() -> None:
    # Older code cannot read the new states: refuse while any referral is in one.
    bind = op.get_bind()
    marks = ", ".join(f"'{state}'" for state in _NEW_STATES)
    count = bind.execute(sa.text(f"SELECT count(*) FROM referrals WHERE state IN ({marks})")).scalar()  # noqa: S608
    if count:
        raise RuntimeError(f"{count} referrals are in a state older code does not know; cannot downgrade")
    op.drop_index(op.f("ix_additional_info_referral_id"), table_name="additional_info")
    op.drop_table("additional_info")
    op.drop_index(op.f("ix_answers_referral_id"), table_name="answers")
    op.drop_table("answers")
