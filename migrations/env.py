"""Alembic environment shared by SQLite and PostgreSQL.

Run through ``z4j db upgrade`` (z4j_collector/store/migrate.py), which passes
the SQLAlchemy URL in ``config.attributes["url"]``.
"""

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.attributes["url"]
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        # SQLite cannot ALTER most things in place: batch mode copies tables.
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
