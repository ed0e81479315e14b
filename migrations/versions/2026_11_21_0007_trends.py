"""trends: task_rollups per minute/hour/day, retention settings per project

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STATES = ("pending", "received", "started", "retry", "success", "failure", "revoked", "rejected", "lost")


def upgrade() -> None:
    # One row per project, bucket size, bucket start, engine, task name and
    # queue ('' when unknown). Counts are task events by the state they move
    # to; runtime and queue wait are mergeable quantile sketches
    # (z4j_collector/sketch.py) as compact JSON text. The primary key serves
    # the trends reads (project, size, time range) and retention deletes.
    op.create_table(
        "task_rollups",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("bucket_size", sa.String(8), nullable=False),
        sa.Column("bucket_start", sa.Float, nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        *[sa.Column(f"n_{state}", sa.BigInteger, nullable=False, server_default="0") for state in STATES],
        sa.Column("runtime_sketch", sa.Text),
        sa.Column("wait_sketch", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "bucket_size", "bucket_start", "engine", "name", "queue",
                                name="pk_task_rollups"),
    )
    # Retention per project in days; NULL means the default (events and tasks:
    # projects.retention_days; rollups: 400). Its own table, so it does not
    # touch projects or the reconciler's project_settings.
    op.create_table(
        "project_retention",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("events_days", sa.Integer),
        sa.Column("tasks_days", sa.Integer),
        sa.Column("rollups_days", sa.Integer),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("project_retention")
    op.drop_table("task_rollups")
