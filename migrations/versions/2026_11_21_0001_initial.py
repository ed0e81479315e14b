"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.Float, nullable=nullable)


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("slug", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("retention_days", sa.Integer, nullable=False, server_default="30"),
        _ts("created_at", nullable=False),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("frame_key", sa.LargeBinary, nullable=False),
        _ts("created_at", nullable=False),
        _ts("revoked_at"),
        _ts("last_seen_at"),
        sa.Column("hostname", sa.String(255)),
        sa.Column("version", sa.String(64)),
        sa.Column("engines", sa.Text),
        sa.Column("dropped_events", sa.BigInteger, nullable=False, server_default="0"),
        sa.UniqueConstraint("project_id", "name", name="uq_agents_project_name"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _ts("created_at", nullable=False),
        _ts("expires_at"),
        _ts("revoked_at"),
        _ts("last_used_at"),
    )
    op.create_table(
        "tasks",
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("engine_state", sa.Text),
        sa.Column("state_rank", sa.SmallInteger, nullable=False),
        _ts("state_ts", nullable=False),
        sa.Column("queue", sa.Text),
        sa.Column("worker", sa.Text),
        sa.Column("args", sa.Text),
        sa.Column("kwargs", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("exception", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("runtime", sa.Float),
        sa.Column("retries", sa.Integer),
        _ts("eta"),
        sa.Column("parent_id", sa.Text),
        sa.Column("root_id", sa.Text),
        sa.Column("group_id", sa.Text),
        sa.Column("chord_id", sa.Text),
        sa.Column("redacted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("replay", sa.LargeBinary),
        _ts("created_at", nullable=False),
        _ts("sent_at"),
        _ts("received_at"),
        _ts("started_at"),
        _ts("finished_at"),
        _ts("updated_at", nullable=False),
        sa.Column("agent_id", sa.Integer),
        # The task's event ids, comma-separated: the timeline is read through
        # task_events' primary key, so ingest pays for no second index there.
        sa.Column("event_ids", sa.Text),
        sa.PrimaryKeyConstraint("project_id", "engine", "task_id", name="pk_tasks"),
    )
    # The task list is read newest first with keyset paging on
    # (created_at, engine, task_id). Every index here is paid for by every
    # ingested event, so only the most selective filters get one now (state,
    # name) plus root_id for trees; queue and worker filters walk
    # ix_tasks_created until the page is full. The scale issue revisits this
    # with its 10-million-task benchmark.
    op.create_index("ix_tasks_created", "tasks", ["project_id", "created_at", "engine", "task_id"])
    for column in ("state", "name"):
        op.create_index(f"ix_tasks_{column}", "tasks", ["project_id", column, "created_at"])
    op.create_index("ix_tasks_root_id", "tasks", ["project_id", "root_id"])
    op.create_table(
        "task_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _ts("ts", nullable=False),
        _ts("ingested_at", nullable=False),
        sa.Column("agent_id", sa.Integer),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("first_seen_at", nullable=False),
        _ts("last_seen_at", nullable=False),
        sa.Column("info", sa.Text),
        sa.Column("agent_id", sa.Integer),
        sa.PrimaryKeyConstraint("project_id", "engine", "name", name="pk_workers"),
    )
    op.create_table(
        "queues",
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("depth", sa.BigInteger, nullable=False),
        _ts("updated_at", nullable=False),
        sa.Column("agent_id", sa.Integer),
        sa.PrimaryKeyConstraint("project_id", "engine", "name", name="pk_queues"),
    )
    op.create_table(
        "commands",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(255)),
        _ts("created_at", nullable=False),
        _ts("dispatched_at"),
        _ts("finished_at"),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_commands_project", "commands", ["project_id", "created_at"])
    op.bulk_insert(projects, [{"slug": "default", "name": "Default", "retention_days": 30, "created_at": time.time()}])


def downgrade() -> None:
    for table in ("commands", "queues", "workers", "task_events", "tasks", "api_tokens", "agents", "projects"):
        op.drop_table(table)
