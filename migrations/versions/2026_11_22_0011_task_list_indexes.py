"""task list indexes: queue, worker and engine filters

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22

The task list is read newest first; every filter gets an index that starts
with (project_id, value) and ends with created_at, so a rare queue, worker or
engine among ten million tasks is found without walking them all.

Free text has no index by default: a trigram index over args, kwargs,
result and exception costs more CPU per ingested event than the rest of
ingest together (docs/performance.md, "What a text index costs"), so it is
switched on per database with ``z4j db text-index on``
(z4j_collector/store/textindex.py).
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

FILTERS = ("queue", "worker", "engine")


def upgrade() -> None:
    for column in FILTERS:
        op.create_index(f"ix_tasks_{column}", "tasks", ["project_id", column, "created_at"])


def downgrade() -> None:
    for column in FILTERS:
        op.drop_index(f"ix_tasks_{column}", "tasks")
