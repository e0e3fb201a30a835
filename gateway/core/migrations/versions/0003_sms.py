"""SMS: provider ids on deliveries, stored webhooks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 23:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("provider_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("provider_status", sa.String(length=32), nullable=True))
        batch.create_index("ix_deliveries_provider_id", ["provider_id"])
    op.create_table(
        "sms_webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("message_sid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("sender_hash", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("outcome", sa.String(length=200), nullable=False),
        sa.Column("reply", sa.LargeBinary(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sms_webhooks")),
        sa.UniqueConstraint("kind", "message_sid", "status", name="uq_sms_webhooks_sid"),
    )
    op.create_index("ix_sms_webhooks_sender", "sms_webhooks", ["sender_hash", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_sms_webhooks_sender", table_name="sms_webhooks")
    op.drop_table("sms_webhooks")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_provider_id")
        batch.drop_column("provider_status")
        batch.drop_column("provider_id")
