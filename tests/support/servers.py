"""Real servers for tests: a throwaway PostgreSQL cluster and a redis-server.

Standard library only (psycopg is imported lazily, for database creation), so
this module also loads in engine environments that lack the collector extra.

Every server started here is stopped again: by ``stop()``, by the context
manager, and as a safety net at interpreter exit (``atexit``) and on SIGTERM.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["PostgresServer", "RedisServer", "free_port"]

# Unix socket paths are limited to 107 bytes; keep our folders short.
_MAX_SOCKET_DIR = 80


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and that no other
    test process of this run was handed: pytest-xdist workers ask the kernel
    at the same time, and two collectors on one port would each answer the
    other's test (a marker file per port claims it for the whole run)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    claims = Path(tempfile.gettempdir()) / f"z4j-test-ports-{os.getuid()}-{run}"
    claims.mkdir(parents=True, exist_ok=True)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            os.close(os.open(claims / str(port), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return port
        except FileExistsError:
            continue  # another test process of this run holds it


# --------------------------------------------------------------- safety net

_live: dict[int, object] = {}
_live_lock = threading.Lock()
_handlers_installed = False


def _register(server: object) -> None:
    global _handlers_installed
    with _live_lock:
        _live[id(server)] = server
        if _handlers_installed:
            return
        _handlers_installed = True
    atexit.register(_stop_all)
    # atexit does not run when the process dies of SIGTERM (CI timeouts); stop
    # our servers first, then die of the signal as before.
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # pragma: no cover - exotic embedding
            pass


def _unregister(server: object) -> None:
    with _live_lock:
        _live.pop(id(server), None)


def _forget(server: "PostgresServer | RedisServer", folder: Path | None) -> None:
    """After stopping: no longer tracked, no port, folder gone."""
    _unregister(server)
    server.port = None
    server.dir = None
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _stop_all() -> None:
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        try:
            server.stop()  # type: ignore[attr-defined]
        except Exception as exc:  # pragma: no cover - best effort at exit
            print(f"z4j tests: could not stop {server!r}: {exc}", file=sys.stderr)


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by hand
    _stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip()]
    return " | ".join(tail) or "(empty log)"


def _short_tempdir(prefix: str, traversable_by_others: bool = False) -> Path:
    """A fresh temp folder with a short path (for Unix sockets).

    With ``traversable_by_others`` the parent chain must be searchable by any
    user, so that a server running as another user can reach the folder.
    """
    base = tempfile.gettempdir()
    ok = len(base) < _MAX_SOCKET_DIR - 20
    if ok and traversable_by_others:
        p = Path(base).resolve()
        for part in [p, *p.parents]:
            if not os.stat(part).st_mode & 0o001:
                ok = False
                break
    return Path(tempfile.mkdtemp(prefix=prefix, dir=None if ok else "/tmp"))


# --------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        bindir = Path(os.path.realpath(found)).parent
        if (bindir / "pg_ctl").exists() and (bindir / "postgres").exists():
            return bindir
    candidates = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        try:
            version = float(Path(d).parent.name)
        except ValueError:
            continue
        if os.path.exists(os.path.join(d, "initdb")):
            candidates.append((version, Path(d)))
    if candidates:
        return max(candidates)[1]
    if found:  # initdb on PATH but its siblings elsewhere: trust PATH
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL not found: no initdb on PATH or under /usr/lib/postgresql/*/bin "
        "(install the Debian package 'postgresql')"
    )


def _ensure_system_user(name: str) -> None:
    try:
        import pwd

        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True,
    )
    if proc.returncode not in (0, 9):  # 9: created meanwhile by someone else
        raise RuntimeError(
            f"PostgreSQL: cannot create system user {name!r} to run the server "
            f"as (initdb refuses root): {proc.stderr.strip()}"
        )


class PostgresServer:
    """A private PostgreSQL cluster in a temp folder on a loopback port.

    ``durable=False`` (tests) turns off fsync, synchronous_commit and
    full_page_writes; ``durable=True`` keeps PostgreSQL's safe defaults (use
    it for benchmarks). Connect as the trusted superuser ``z4j``.
    """

    user = "z4j"

    def __init__(self, *, durable: bool = False, max_connections: int = 200,
                 start_timeout: float = 60.0, settings: tuple[str, ...] = ()) -> None:
        self.durable = durable
        self.extra_settings = settings
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.dir: Path | None = None
        self._owner_pid: int | None = None
        self._run_as: str | None = None
        self._bindir: Path | None = None

    # -- paths
    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        if self.port is None:
            raise RuntimeError("PostgreSQL server not started")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def __repr__(self) -> str:
        return f"<PostgresServer port={self.port} dir={self.dir}>"

    # -- process helpers
    def _cmd(self, *args: str) -> list[str]:
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._cmd(*args), cwd=self.dir, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )

    # -- lifecycle
    def start(self) -> "PostgresServer":
        if self.port is not None:
            return self
        self._bindir = _pg_bindir()
        if os.geteuid() == 0:
            _ensure_system_user("postgres")
            self._run_as = "postgres"
        self.dir = _short_tempdir("z4j-pg-", traversable_by_others=bool(self._run_as))
        self._owner_pid = os.getpid()
        _register(self)
        try:
            if self._run_as:
                shutil.chown(self.dir, user=self._run_as, group=self._run_as)
            self._initdb()
            self._start_postmaster()
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        args = [str(self._bindir / "initdb"), "-D", str(self.data_dir),
                "-A", "trust", "-U", self.user, "-E", "UTF8", "--locale=C",
                "--no-instructions"]
        if not self.durable:
            args.append("--no-sync")
        proc = self._run(*args)
        if proc.returncode != 0:
            out = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise RuntimeError(f"PostgreSQL initdb failed (exit {proc.returncode}): {out}")
        sock = str(self.socket_dir).replace("'", "''")
        settings = [
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{sock}'",
            f"max_connections = {self.max_connections}",
            "logging_collector = off",
        ]
        if not self.durable:
            settings += ["fsync = off", "synchronous_commit = off",
                         "full_page_writes = off"]
        settings += list(self.extra_settings)
        # Appending keeps the file's owner (the postgres user when root).
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# z4j tests\n" + "\n".join(settings) + "\n")

    def _start_postmaster(self) -> None:
        last = ""
        for _attempt in range(5):
            port = free_port()
            proc = self._run(
                str(self._bindir / "pg_ctl"), "start", "-w",
                "-t", str(int(self.start_timeout)), "-D", str(self.data_dir),
                "-l", str(self.log_path), "-o", f"-p {port}",
                timeout=self.start_timeout + 30,
            )
            if proc.returncode == 0:
                self.port = port
                return
            last = _tail(self.log_path)
            if "already in use" not in last and "could not bind" not in last:
                break
        raise RuntimeError(
            f"PostgreSQL did not start (pg_ctl exit {proc.returncode}, "
            f"bindir {self._bindir}, dir {self.dir}): {last}"
        )

    def stop(self) -> None:
        if self._owner_pid is not None and self._owner_pid != os.getpid():
            return  # a forked child must not stop its parent's server
        d = self.dir
        try:
            if d is not None and (d / "data" / "postmaster.pid").exists():
                try:
                    proc = self._run(str(self._bindir / "pg_ctl"), "stop",
                                     "-D", str(d / "data"), "-m", "immediate",
                                     "-w", "-t", "30", timeout=60)
                    ok = proc.returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
                if not ok:
                    self._kill_postmaster(d / "data" / "postmaster.pid")
        finally:
            _forget(self, d)

    @staticmethod
    def _kill_postmaster(pidfile: Path) -> None:
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases
    def _admin_execute(self, query) -> None:
        import psycopg  # lazy: only the collector environment has it

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(query)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owner z4j); return its URL."""
        from psycopg import sql

        self._admin_execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting its sessions first."""
        from psycopg import sql

        self._admin_execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# -------------------------------------------------------------------- Redis


def _redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on a loopback port, no persistence."""

    def __init__(self, *, start_timeout: float = 30.0, executable: str | None = None) -> None:
        self.start_timeout = start_timeout
        self.executable = executable
        self.port: int | None = None
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._owner_pid: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("redis-server not started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "redis.log"

    def __repr__(self) -> str:
        return f"<RedisServer port={self.port} dir={self.dir}>"

    def start(self) -> "RedisServer":
        if self.port is not None:
            return self
        exe = self.executable or shutil.which("redis-server")
        if not exe:
            raise RuntimeError(
                "redis-server not found on PATH (install the Debian package 'redis-server')"
            )
        self.dir = _short_tempdir("z4j-redis-")
        self._owner_pid = os.getpid()
        _register(self)
        try:
            self._launch(exe)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, exe: str) -> None:
        last = ""
        for _attempt in range(5):
            port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [exe, "--port", str(port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                     "--daemonize", "no", "--logfile", ""],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.dir, start_new_session=True,
                )
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _redis_ping(port):
                    self.port = port
                    return
                time.sleep(0.02)
            last = _tail(self.log_path)
            self._terminate()
            if "in use" not in last:
                break
        raise RuntimeError(f"redis-server did not start ({exe}, dir {self.dir}): {last}")

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        if self._owner_pid is not None and self._owner_pid != os.getpid():
            return
        d = self.dir
        try:
            self._terminate()
        finally:
            _forget(self, d)

    def command(self, *parts: str | bytes) -> bytes:
        """Send one command (RESP array) and return the raw first reply."""
        if self.port is None:
            raise RuntimeError("redis-server not started")
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            b = p.encode() if isinstance(p, str) else p
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"".join(out))
            return s.recv(65536)

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"redis FLUSHALL failed: {reply!r}")

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
