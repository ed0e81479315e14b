"""task_events partitioned by day on PostgreSQL (range of the time-ordered id)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

import time

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DAY_MS = 86_400_000
AHEAD_DAYS = 7


def _bound(ms: int) -> str:
    return f"{ms:012x}"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: one table; retention deletes in batches
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    # The events stored so far become one partition below today. Ids that do
    # not start with 12 hex digits of milliseconds (protocol.new_id) go to
    # the default partition, with anything a skewed clock sends too far ahead.
    op.execute("ALTER TABLE task_events RENAME TO task_events_before")
    op.execute("ALTER TABLE task_events_before RENAME CONSTRAINT task_events_pkey TO task_events_before_pkey")
    op.execute("CREATE TABLE task_events (LIKE task_events_before INCLUDING DEFAULTS) PARTITION BY RANGE (id)")
    op.execute("ALTER TABLE task_events ADD CONSTRAINT task_events_pkey PRIMARY KEY (id)")
    op.execute("CREATE TABLE task_events_other PARTITION OF task_events DEFAULT")
    op.execute("INSERT INTO task_events_other SELECT * FROM task_events_before "
               f"WHERE id !~ '^[0-9a-f]{{12}}' OR id >= '{_bound(today)}'")
    op.execute(f"DELETE FROM task_events_before WHERE id !~ '^[0-9a-f]{{12}}' OR id >= '{_bound(today)}'")
    # A checked constraint lets the attach skip its own scan.
    op.execute(f"ALTER TABLE task_events_before ADD CONSTRAINT task_events_before_range CHECK (id < '{_bound(today)}')")
    op.execute(f"ALTER TABLE task_events ATTACH PARTITION task_events_before FOR VALUES FROM (MINVALUE) "
               f"TO ('{_bound(today)}')")
    for day in range(AHEAD_DAYS + 1):
        start = today + day * DAY_MS
        name = "task_events_" + time.strftime("%Y%m%d", time.gmtime(start / 1000))
        op.execute(f"CREATE TABLE {name} PARTITION OF task_events FOR VALUES FROM ('{_bound(start)}') "
                   f"TO ('{_bound(start + DAY_MS)}')")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE TABLE task_events_flat (LIKE task_events INCLUDING DEFAULTS)")
    op.execute("INSERT INTO task_events_flat SELECT * FROM task_events")
    op.execute("DROP TABLE task_events")
    op.execute("ALTER TABLE task_events_flat RENAME TO task_events")
    op.execute("ALTER TABLE task_events ADD CONSTRAINT task_events_pkey PRIMARY KEY (id)")
