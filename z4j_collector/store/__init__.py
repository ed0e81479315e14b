"""The store: every SQL statement of the collector lives in this package."""

from __future__ import annotations

from z4j_collector.settings import dialect_of
from z4j_collector.store.base import SqlStore


def make_store(url: str) -> SqlStore:
    if dialect_of(url) == "postgresql":
        from z4j_collector.store.postgres import PostgresStore

        return PostgresStore(url)
    from z4j_collector.store.sqlite import SqliteStore

    return SqliteStore(url)
