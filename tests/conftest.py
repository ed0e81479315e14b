"""Generic test fixtures: real PostgreSQL and Redis servers, per-test databases.

Must not import any z4j package. Servers are started lazily, once per test
session (with pytest-xdist: once per worker process), and always stopped.

Environment:
  Z4J_TEST_DBS   which storage backends ``db_url`` covers: "sqlite",
                 "postgres" or "sqlite,postgres" (default: both).
  Z4J_HOME       defaults to a throwaway folder, so tests never touch ~/.z4j.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.support.dbs import DBS as _DBS  # noqa: E402
from tests.support.servers import PostgresServer, RedisServer  # noqa: E402

# A Z4J_HOME set by the user is respected; one we made (possibly inherited by
# an xdist worker from its controller) is replaced by a private one.
if os.environ.get("Z4J_HOME") in (None, os.environ.get("_Z4J_TEST_HOME")):
    _home = tempfile.mkdtemp(prefix="z4j-home-")
    os.environ["Z4J_HOME"] = os.environ["_Z4J_TEST_HOME"] = _home
    atexit.register(shutil.rmtree, _home, ignore_errors=True)

_unknown = set(_DBS) - {"sqlite", "postgres"}
if _unknown or not _DBS:
    raise pytest.UsageError(
        f"Z4J_TEST_DBS={os.environ.get('Z4J_TEST_DBS')!r}: use sqlite, postgres or both"
    )


@pytest.fixture(scope="session")
def postgres_server():
    """One private PostgreSQL cluster (non-durable, fast) for the session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty PostgreSQL database for this test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server():
    """One private redis-server for the session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """The session Redis, emptied before this test."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(params=_DBS, ids=_DBS)
def db_url(request, tmp_path):
    """A fresh storage URL: a SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/z4j.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def collector(db_url, tmp_path):
    """A real ``z4j serve`` process on a fresh database (SQLite and PostgreSQL)."""
    from tests.support.collector import Collector

    c = Collector(db_url, tmp_path).start()
    yield c
    c.stop()


# ------------------------------------------------------------ xdist scheduling
# scripts/test.sh runs the main family with --dist loadgroup and without
# xdist's reordering: a test is a unit of work of its own, except that the
# tests sharing a module-scoped fixture (a module collector, one per database)
# are one unit, so that one worker sets it up once (the sqlite and postgres
# halves of a module are two units). Units are handed out in collection order,
# which puts the long ones first and the quick, server-less ones last, where
# they even out the workers' ends.

_SERVER_FIXTURES = {"collector", "db_url", "postgres_server", "postgres_url", "redis_server", "redis_url"}


def _group_by_shared_fixtures(items) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group"):
            continue
        shared = sorted(name for name in info.names_closure
                        if any(d.scope in ("package", "module", "class") for d in info.name2fixturedefs.get(name, ())))
        if not shared:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        key = ",".join(f"{name}={params[name]}" for name in shared if name in params)
        # xdist reads a group after the last "@" only when no "]" follows it
        name = f"{item.module.__name__}:{key}" if key else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(name.replace("@", "_").replace("]", ")")))


def _weight(item) -> int:
    """0: the end-to-end runs (the longest tests); 1: tests on real servers; 2: the rest."""
    if "e2e" in item.path.parts:
        return 0
    if item.get_closest_marker("xdist_group") or _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return 1
    return 2


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    _group_by_shared_fixtures(items)  # before xdist's hook reads the marks
    result = yield
    items.sort(key=_weight)  # stable: after pytest grouped the items by fixture parameter
    return result
