"""Saved skills: each principal's programs, by name and version.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skills",
        sa.Column("owner", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("code", sa.LargeBinary, nullable=False),
        sa.Column("input_schema", sa.Text, nullable=True),
        sa.Column("output_schema", sa.Text, nullable=True),
        sa.Column("allowed_tools", sa.Text, nullable=True),
        sa.Column("saved_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("skills")
