"""Operations: retention (a legal hold and the time a referral's content was purged; purged sealed
columns become None, and a purged message's raw and envelope become b""), the daily digest's
durable row (exactly one a day across restarts and instances), and outbox rows not about one
referral (the digest: deliveries.referral_id may be None)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 18:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # referrals and messages are referenced by foreign keys, so SQLite's batch mode (copy, drop,
    # rename) cannot rebuild them with foreign keys on: referrals only gains columns (ADD COLUMN
    # with a constant default works in place), and messages keeps raw and envelope NOT NULL (a
    # purged one holds b""). deliveries and sms_webhooks are referenced by nothing: batch mode
    # drops their NOT NULLs.
    op.add_column("referrals", sa.Column("legal_hold", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("referrals", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("referral_id", existing_type=sa.String(length=32), nullable=True)
        batch.alter_column("payload", existing_type=sa.LargeBinary(), nullable=True)
    with op.batch_alter_table("sms_webhooks") as batch:
        batch.alter_column("payload", existing_type=sa.LargeBinary(), nullable=True)
    op.create_table(
        "digests",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("made_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("made_by", sa.String(length=64), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_digests")),
    )


def downgrade() -> None:
    op.drop_table("digests")
    # Purged content and digest deliveries cannot be given back their NOT NULL values: refuse.
    bind = op.get_bind()
    purged = bind.execute(sa.text("SELECT count(*) FROM referrals WHERE purged_at IS NOT NULL")).scalar()
    loose = bind.execute(sa.text("SELECT count(*) FROM deliveries WHERE referral_id IS NULL")).scalar()
    if purged or loose:
        raise RuntimeError(f"{purged} purged referrals and {loose} deliveries without a referral; cannot downgrade")
    with op.batch_alter_table("sms_webhooks") as batch:
        batch.alter_column("payload", existing_type=sa.LargeBinary(), nullable=False)
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("payload", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("referral_id", existing_type=sa.String(length=32), nullable=False)
    op.drop_column("referrals", "purged_at")
    op.drop_column("referrals", "legal_hold")
