"""periodic schedules (Celery Beat and later engines) and their fire history

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.Float, nullable=nullable)


def upgrade() -> None:
    # What the scheduler's own store holds, as last reported by the agent
    # running next to it (the store stays the truth: z4j applies changes to it
    # through that agent and reads them back). Arguments are redacted copies,
    # for display only.
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        # redbeat · django · file (z4j's scheduler class) · persistent (read-only)
        sa.Column("scheduler", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        # JSON {kind: interval|crontab|clocked|…, …}
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("kwargs", sa.Text, nullable=False),
        sa.Column("queue", sa.String(255)),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("redacted", sa.Boolean, nullable=False, server_default=sa.false()),
        _ts("next_run_at"),
        _ts("last_run_at"),
        sa.Column("total_run_count", sa.Integer, nullable=False, server_default="0"),
        # z4j (created through z4j) · store (found in the scheduler's store) · code (beat_schedule: read-only)
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("agent_id", sa.Integer),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("synced_at", nullable=False),
        sa.UniqueConstraint("project_id", "engine", "name", name="uq_schedules_name"),
    )
    op.create_table(
        "schedule_fires",
        # The agent's time-ordered fire id: a fire reported twice is stored once.
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("schedule", sa.String(200), nullable=False),
        sa.Column("task", sa.String(255)),
        sa.Column("task_id", sa.String(255)),
        _ts("ts", nullable=False),
        sa.Column("manual", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("actor", sa.String(400)),
        sa.Column("agent_id", sa.Integer),
    )
    op.create_index("ix_schedule_fires_schedule", "schedule_fires", ["project_id", "engine", "schedule", "ts"])


def downgrade() -> None:
    op.drop_index("ix_schedule_fires_schedule", table_name="schedule_fires")
    op.drop_table("schedule_fires")
    op.drop_table("schedules")
