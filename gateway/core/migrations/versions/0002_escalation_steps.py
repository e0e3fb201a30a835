"""escalation steps are rows in deadlines

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add several columns in one ALTER; alembic copies the table.
    with op.batch_alter_table("deadlines") as batch:
        batch.add_column(sa.Column("chain", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("round", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deadlines") as batch:
        batch.drop_column("detail")
        batch.drop_column("round")
        batch.drop_column("step")
        batch.drop_column("chain")
