"""The server fixtures themselves work."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.support.servers import PostgresServer, RedisServer, free_port


def _redis(url: str, *parts: str) -> bytes:
    host_port = url.removeprefix("redis://").split("/")[0]
    host, port = host_port.split(":")
    payload = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode()
        payload.append(b"$%d\r\n%s\r\n" % (len(b), b))
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"".join(payload))
        return s.recv(4096)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """The process has exited (a not-yet-reaped zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_z4j_home_is_isolated():
    home = Path(os.environ["Z4J_HOME"])
    assert home.is_dir()
    assert home != Path.home() / ".z4j"


def test_db_url(db_url, request):
    if request.node.callspec.params["db_url"] == "sqlite":
        assert db_url.startswith("sqlite:////")
        path = Path(db_url.removeprefix("sqlite:///"))
        assert path.is_absolute() and path.parent.is_dir() and not path.exists()
        import sqlite3

        with sqlite3.connect(path) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    else:
        psycopg = pytest.importorskip("psycopg")
        assert db_url.startswith("postgresql://z4j@127.0.0.1:")
        with psycopg.connect(db_url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            # nothing from other tests leaks in
            assert conn.execute(
                "select count(*) from pg_tables where schemaname = 'public'"
            ).fetchone() == (0,)
            conn.execute("create table leak_check (id int)")


def test_postgres_databases_are_isolated(postgres_server):
    psycopg = pytest.importorskip("psycopg")
    a, b = f"iso_{uuid.uuid4().hex[:8]}", f"iso_{uuid.uuid4().hex[:8]}"
    url_a, url_b = postgres_server.create_database(a), postgres_server.create_database(b)
    try:
        with psycopg.connect(url_a) as conn:
            conn.execute("create table only_in_a (id int)")
        with psycopg.connect(url_b) as conn:
            assert conn.execute("select to_regclass('only_in_a')").fetchone() == (None,)
        conn = psycopg.connect(url_a, autocommit=True)
        try:
            assert conn.execute("select to_regclass('only_in_a')").fetchone() == ("only_in_a",)
            # an open session does not block the drop (WITH (FORCE)); it is cut
            postgres_server.drop_database(a)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
        finally:
            conn.close()
    finally:
        postgres_server.drop_database(a)
        postgres_server.drop_database(b)


def test_postgres_listen_notify(postgres_url):
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_url, autocommit=True) as listener, \
            psycopg.connect(postgres_url, autocommit=True) as sender:
        listener.execute("LISTEN z4j_test")
        sender.execute("NOTIFY z4j_test, 'hello'")
        got = next(listener.notifies(timeout=5))
        assert (got.channel, got.payload) == ("z4j_test", "hello")


def test_redis_ping_set_get(redis_url):
    assert redis_url.startswith("redis://127.0.0.1:") and redis_url.endswith("/0")
    assert _redis(redis_url, "PING") == b"+PONG\r\n"
    assert _redis(redis_url, "SET", "z4j:k", "v1") == b"+OK\r\n"
    assert _redis(redis_url, "GET", "z4j:k") == b"$2\r\nv1\r\n"


def test_redis_url_is_flushed_per_test(redis_url):
    assert _redis(redis_url, "DBSIZE") == b":0\r\n"


def test_servers_stop_cleanly():
    with PostgresServer() as pg:
        pid_file = pg.data_dir / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        folder = pg.dir
    assert not folder.exists()
    assert _gone(pid)
    with RedisServer() as r:
        port, folder = r.port, r.dir
    assert not folder.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
