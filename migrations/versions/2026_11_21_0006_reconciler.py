"""reconciler: next-look time and attempts per task, settings per project

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_OPEN = "state IN ('received', 'started')"


def upgrade() -> None:
    # When the reconciler may look at a stuck task again (NULL: never looked
    # at) and how often it tried without settling it (exponential backoff).
    # Nullable without a default: adding them rewrites no table.
    with op.batch_alter_table("tasks", recreate="never") as batch:
        batch.add_column(sa.Column("reconcile_after", sa.Float, nullable=True))
        batch.add_column(sa.Column("reconcile_attempts", sa.Integer, nullable=True))
    # Only tasks still received/started are candidates; the partial index
    # holds just those, so ingest of finished tasks pays nothing for it.
    op.create_index("ix_tasks_open", "tasks", ["project_id", "state", "reconcile_after"], if_not_exists=True,
                    postgresql_where=sa.text(_OPEN), sqlite_where=sa.text(_OPEN))
    # Per-project reconciler settings; a missing row or a NULL column means
    # the collector's default (Z4J_RECONCILE_* environment, docs/production.md).
    op.create_table(
        "project_settings",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("stuck_after_s", sa.Float),
        sa.Column("worker_offline_after_s", sa.Float),
        sa.Column("reconcile_batch", sa.Integer),
        sa.Column("lost_unprobed_after_s", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("project_settings")
    op.drop_index("ix_tasks_open", table_name="tasks", if_exists=True)
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("reconcile_attempts")
        batch.drop_column("reconcile_after")
