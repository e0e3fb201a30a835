"""Partner-signed content already made into a referral, keyed by its digest: a replay under a new
Message-ID is closed as a repeat (issue 14)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new table only: referrals gains no column (the new "repeat" state is a value of the
    # existing state column, and a repeat's original is named in its events), so nothing that
    # foreign keys point at is rebuilt on SQLite.
    op.create_table(
        "signed_content",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("referral_id", sa.String(length=32), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_signed_content_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_signed_content")),
    )


def downgrade() -> None:
    # Repeats already recorded stay repeats (their events say so); only new replays would no
    # longer be recognised. Code before 0009 cannot read the "repeat" state: refuse while any exist.
    bind = op.get_bind()
    repeats = bind.execute(sa.text("SELECT count(*) FROM referrals WHERE state = 'repeat'")).scalar()
    if repeats:
        raise RuntimeError(f"{repeats} referrals are repeats, a state older code does not know; cannot downgrade")
    op.drop_table("signed_content")
