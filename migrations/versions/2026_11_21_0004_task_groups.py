"""index on tasks.group_id for workflow trees

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_GROUPED = "group_id IS NOT NULL"


def upgrade() -> None:
    # Members of a Celery group sent from a client are their own roots: only
    # group_id links them, so the tree route looks them up by it. Partial, so
    # only grouped tasks pay for it at ingest.
    # IF NOT EXISTS: on a large PostgreSQL table it can be built beforehand
    # with CREATE INDEX CONCURRENTLY (migrations/NOTES.md).
    op.create_index("ix_tasks_group_id", "tasks", ["project_id", "group_id"], if_not_exists=True,
                    postgresql_where=sa.text(_GROUPED), sqlite_where=sa.text(_GROUPED))


def downgrade() -> None:
    op.drop_index("ix_tasks_group_id", table_name="tasks", if_exists=True)
