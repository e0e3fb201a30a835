"""The public form's attempts per client address and window, shared by every instance (issue 13)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "form_attempts",
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client", "window_start", name=op.f("pk_form_attempts")),
    )
    op.create_index("ix_form_attempts_window_start", "form_attempts", ["window_start"])


def downgrade() -> None:
    # Only counts of a flood guard: nothing is lost that a quarter of an hour would not forget.
    op.drop_index("ix_form_attempts_window_start", table_name="form_attempts")
    op.drop_table("form_attempts")
