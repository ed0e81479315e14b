"""task list indexes: queue, worker and engine filters; free-text search

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22

The task list is read newest first; every filter gets an index that starts
with (project_id, value) and ends with created_at, so a rare queue, worker or
engine among ten million tasks is found without walking them all.

Free text searches task_id, name, args, kwargs, result and exception:
- PostgreSQL: one trigram (pg_trgm) GIN index over those columns joined, which
  ``ILIKE '%…%'`` uses (z4j_collector/store/postgres.py SEARCH_TEXT must stay
  the same expression, or the index is not used);
- SQLite: an FTS5 table with the trigram tokenizer, its content read from
  ``tasks`` by rowid and kept in step by triggers that fire only when one of
  those columns changes (a state change alone does not touch it). VACUUM may
  renumber the rowids of ``tasks``: after one, rebuild the index with
  ``INSERT INTO tasks_text(tasks_text) VALUES ('rebuild')`` (docs/production.md).
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

FILTERS = ("queue", "worker", "engine")
TEXT = ("task_id", "name", "args", "kwargs", "result", "exception")
PG_TEXT = " || ' ' || ".join(f"coalesce({c}, '')" for c in TEXT)


def _values(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c}" for c in TEXT)


def upgrade() -> None:
    for column in FILTERS:
        op.create_index(f"ix_tasks_{column}", "tasks", ["project_id", column, "created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(f"CREATE INDEX ix_tasks_text ON tasks USING gin (({PG_TEXT}) gin_trgm_ops)")
        return
    columns = ", ".join(TEXT)
    op.execute(f"CREATE VIRTUAL TABLE tasks_text USING fts5({columns}, content='tasks', tokenize='trigram')")
    changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in TEXT)
    op.execute(f"CREATE TRIGGER tasks_text_insert AFTER INSERT ON tasks BEGIN "
               f"INSERT INTO tasks_text (rowid, {columns}) VALUES (new.rowid, {_values('new')}); END")
    op.execute(f"CREATE TRIGGER tasks_text_delete AFTER DELETE ON tasks BEGIN "
               f"INSERT INTO tasks_text (tasks_text, rowid, {columns}) VALUES ('delete', old.rowid, {_values('old')}); "
               f"END")
    op.execute(f"CREATE TRIGGER tasks_text_update AFTER UPDATE ON tasks WHEN {changed} BEGIN "
               f"INSERT INTO tasks_text (tasks_text, rowid, {columns}) VALUES ('delete', old.rowid, {_values('old')}); "
               f"INSERT INTO tasks_text (rowid, {columns}) VALUES (new.rowid, {_values('new')}); END")
    op.execute("INSERT INTO tasks_text (tasks_text) VALUES ('rebuild')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_tasks_text")
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS tasks_text_{trigger}")
        op.execute("DROP TABLE IF EXISTS tasks_text")
    for column in FILTERS:
        op.drop_index(f"ix_tasks_{column}", "tasks")
