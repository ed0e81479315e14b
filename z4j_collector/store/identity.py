"""SQL for users, memberships, sessions, tokens, invitations, resets, the
setup token, login failures, projects' lifecycle, agent credentials and the
audit chain. Mixed into :class:`~z4j_collector.store.base.SqlStore`.

Methods that take a ``tx`` run inside the caller's write transaction, so a
change and its audit row commit together (services/audit.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from z4j_collector.errors import Conflict

USER_COLUMNS = ("id", "email", "name", "password_hash", "is_superuser", "created_at", "password_changed_at",
                "disabled_at")
SESSION_COLUMNS = ("id", "user_id", "created_at", "last_used_at", "expires_at", "idle_s", "revoked_at", "source",
                   "user_agent")
TOKEN_COLUMNS = ("id", "project_id", "user_id", "name", "role", "created_at", "expires_at", "revoked_at",
                 "last_used_at")
INVITATION_COLUMNS = ("id", "project_id", "email", "role", "invited_by", "created_at", "expires_at", "used_at",
                      "revoked_at")
AUDIT_COLUMNS = ("id", "project_id", "seq", "ts", "actor", "actor_user_id", "source", "action", "target",
                 "outcome", "detail", "prev_hash", "hash")
CHECKPOINT_COLUMNS = ("id", "project_id", "seq", "hash", "ts", "key_id", "signature")


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    name: str
    password_hash: str
    is_superuser: bool
    created_at: float
    password_changed_at: float | None
    disabled_at: float | None


def _dicts(columns: Sequence[str], rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(columns, r)) for r in rows]


def _user(row: tuple | None) -> UserRow | None:
    if row is None:
        return None
    values = list(row)
    values[4] = bool(values[4])
    return UserRow(*values)


class IdentitySql:
    """Needs ``fetchall``, ``fetchone``, ``write`` and ``execute`` (SqlStore)."""

    for_update = ""
    """Row lock on a SELECT inside a write transaction (PostgreSQL: FOR UPDATE)."""

    # -------------------------------------------------- users

    async def count_users(self) -> int:
        return (await self.fetchone("SELECT COUNT(*) FROM users"))[0]  # type: ignore[attr-defined,index]

    async def user_by_email(self, email: str) -> UserRow | None:
        return _user(await self.fetchone(  # type: ignore[attr-defined]
            f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE email = ?", (email,)))

    async def user_by_id(self, user_id: int) -> UserRow | None:
        return _user(await self.fetchone(  # type: ignore[attr-defined]
            f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE id = ?", (user_id,)))

    async def list_users(self) -> list[dict[str, Any]]:
        cols = ("id", "email", "name", "is_superuser", "created_at", "disabled_at")
        rows = await self.fetchall(f"SELECT {', '.join(cols)} FROM users ORDER BY email")  # type: ignore[attr-defined]
        return [{**d, "is_superuser": bool(d["is_superuser"])} for d in _dicts(cols, rows)]

    async def insert_user(self, tx: Any, email: str, name: str, password_hash: str, superuser: bool, now: float) -> int:
        if await tx.fetchall("SELECT id FROM users WHERE email = ?", (email,)):
            raise Conflict(f"a user with e-mail {email} already exists", code="user_exists")
        rows = await tx.fetchall(
            "INSERT INTO users (email, name, password_hash, is_superuser, created_at, password_changed_at) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (email, name, password_hash, superuser, now, now),
        )
        return rows[0][0]

    async def user_id_tx(self, tx: Any, email: str | None) -> int | None:
        """The user with ``email`` (None: any user at all), inside a write transaction."""
        if email is None:
            rows = await tx.fetchall("SELECT id FROM users ORDER BY id LIMIT 1")
        else:
            rows = await tx.fetchall("SELECT id FROM users WHERE email = ?", (email,))
        return rows[0][0] if rows else None

    async def set_password(self, tx: Any, user_id: int, password_hash: str, now: float) -> None:
        await tx.execute("UPDATE users SET password_hash = ?, password_changed_at = ? WHERE id = ?",
                         (password_hash, now, user_id))

    async def set_user_disabled(self, tx: Any, user_id: int, disabled_at: float | None) -> int:
        return await tx.execute("UPDATE users SET disabled_at = ? WHERE id = ?", (disabled_at, user_id))

    async def set_superuser(self, tx: Any, user_id: int, superuser: bool) -> int:
        return await tx.execute("UPDATE users SET is_superuser = ? WHERE id = ?", (superuser, user_id))

    # -------------------------------------------------- projects and memberships

    async def project_by_slug(self, slug: str) -> dict[str, Any] | None:
        cols = ("id", "slug", "name", "retention_days", "created_at")
        row = await self.fetchone(f"SELECT {', '.join(cols)} FROM projects WHERE slug = ?", (slug,))  # type: ignore[attr-defined]
        return dict(zip(cols, row)) if row else None

    async def project_slug_tx(self, tx: Any, project_id: int) -> str | None:
        rows = await tx.fetchall("SELECT slug FROM projects WHERE id = ?", (project_id,))
        return rows[0][0] if rows else None

    async def insert_project(self, tx: Any, slug: str, name: str, now: float) -> int:
        if await tx.fetchall("SELECT id FROM projects WHERE slug = ?", (slug,)):
            raise Conflict(f"a project {slug!r} already exists", code="project_exists")
        rows = await tx.fetchall(
            "INSERT INTO projects (slug, name, retention_days, created_at) VALUES (?, ?, 30, ?) RETURNING id",
            (slug, name, now),
        )
        return rows[0][0]

    async def delete_project(self, tx: Any, project_id: int) -> None:
        # Tables without a foreign key to projects (ingest pays for none).
        for table in ("task_events", "tasks", "workers", "queues", "commands", "audit_checkpoints", "audit_heads",
                      "audit_log"):
            await tx.execute(f"DELETE FROM {table} WHERE project_id = ?", (project_id,))
        for table in ("memberships", "invitations", "api_tokens", "agents"):
            await tx.execute(f"DELETE FROM {table} WHERE project_id = ?", (project_id,))
        await tx.execute("DELETE FROM projects WHERE id = ?", (project_id,))

    async def membership_role(self, user_id: int, project_id: int) -> str | None:
        row = await self.fetchone(  # type: ignore[attr-defined]
            "SELECT role FROM memberships WHERE user_id = ? AND project_id = ?", (user_id, project_id))
        return row[0] if row else None

    async def user_projects(self, user_id: int | None) -> list[dict[str, Any]]:
        """The projects a user belongs to, with their role (``None``: every project, as owner)."""
        cols = ("id", "slug", "name", "retention_days", "created_at", "role")
        if user_id is None:
            rows = await self.fetchall(  # type: ignore[attr-defined]
                "SELECT id, slug, name, retention_days, created_at, 'owner' FROM projects ORDER BY slug")
        else:
            rows = await self.fetchall(  # type: ignore[attr-defined]
                "SELECT p.id, p.slug, p.name, p.retention_days, p.created_at, m.role FROM projects p "
                "JOIN memberships m ON m.project_id = p.id WHERE m.user_id = ? ORDER BY p.slug", (user_id,))
        return _dicts(cols, rows)

    async def list_members(self, project_id: int) -> list[dict[str, Any]]:
        cols = ("user_id", "email", "name", "role", "created_at", "disabled_at")
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT u.id, u.email, u.name, m.role, m.created_at, u.disabled_at FROM memberships m "
            "JOIN users u ON u.id = m.user_id WHERE m.project_id = ? ORDER BY u.email", (project_id,))
        return _dicts(cols, rows)

    async def member_role_tx(self, tx: Any, project_id: int, user_id: int) -> str | None:
        rows = await tx.fetchall(
            f"SELECT role FROM memberships WHERE project_id = ? AND user_id = ?{self.for_update}", (project_id, user_id))
        return rows[0][0] if rows else None

    async def set_membership(self, tx: Any, project_id: int, user_id: int, role: str, now: float) -> None:
        if await tx.execute("UPDATE memberships SET role = ? WHERE project_id = ? AND user_id = ?",
                            (role, project_id, user_id)) == 0:
            await tx.execute("INSERT INTO memberships (project_id, user_id, role, created_at) VALUES (?, ?, ?, ?)",
                             (project_id, user_id, role, now))

    async def delete_membership(self, tx: Any, project_id: int, user_id: int) -> int:
        return await tx.execute("DELETE FROM memberships WHERE project_id = ? AND user_id = ?", (project_id, user_id))

    async def count_owners(self, tx: Any, project_id: int) -> int:
        # Lock the owners' rows: two admins demoting the last two owners at
        # once must not both succeed (PostgreSQL; SQLite has one writer).
        rows = await tx.fetchall(
            f"SELECT user_id FROM memberships WHERE project_id = ? AND role = 'owner'{self.for_update}", (project_id,))
        return len(rows)

    # -------------------------------------------------- sessions

    async def insert_session(self, tx: Any, user_id: int, token_hash: str, now: float, expires_at: float,
                             idle_s: float, source: str | None, user_agent: str | None) -> int:
        rows = await tx.fetchall(
            "INSERT INTO sessions (user_id, token_hash, created_at, last_used_at, expires_at, idle_s, source, "
            "user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (user_id, token_hash, now, now, expires_at, idle_s, source, (user_agent or "")[:255]),
        )
        return rows[0][0]

    async def session_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE token_hash = ?", (token_hash,))
        return dict(zip(SESSION_COLUMNS, row)) if row else None

    async def touch_session(self, session_id: int, now: float) -> None:
        await self.execute("UPDATE sessions SET last_used_at = ? WHERE id = ?", (now, session_id))  # type: ignore[attr-defined]

    async def list_sessions(self, user_id: int, now: float) -> list[dict[str, Any]]:
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE user_id = ? AND revoked_at IS NULL "
            "AND expires_at > ? AND last_used_at + idle_s > ? ORDER BY created_at DESC", (user_id, now, now))
        return _dicts(SESSION_COLUMNS, rows)

    async def revoke_session(self, tx: Any, session_id: int, user_id: int, now: float) -> int:
        return await tx.execute(
            "UPDATE sessions SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
            (now, session_id, user_id))

    async def revoke_user_credentials(self, tx: Any, user_id: int, now: float, sessions: bool = True,
                                      tokens: bool = True, keep_session: int | None = None) -> int:
        """End every session (but ``keep_session``) and/or API token of a user; how many were live."""
        n = 0
        if sessions:
            n += await tx.execute(
                "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL AND id <> ?",
                (now, user_id, keep_session if keep_session is not None else -1))
        if tokens:
            n += await tx.execute("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                                  (now, user_id))
        return n

    # -------------------------------------------------- API tokens

    async def insert_api_token(self, tx: Any, project_id: int, user_id: int | None, name: str, role: str,
                               token_hash: str, now: float, expires_at: float | None) -> int:
        rows = await tx.fetchall(
            "INSERT INTO api_tokens (project_id, user_id, name, role, token_hash, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (project_id, user_id, name, role, token_hash, now, expires_at),
        )
        return rows[0][0]

    async def api_token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"SELECT {', '.join(TOKEN_COLUMNS)} FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return dict(zip(TOKEN_COLUMNS, row)) if row else None

    async def list_api_tokens(self, project_id: int, user_id: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(TOKEN_COLUMNS)} FROM api_tokens WHERE project_id = ?"
        params: list[Any] = [project_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        rows = await self.fetchall(sql + " ORDER BY created_at DESC", params)  # type: ignore[attr-defined]
        return _dicts(TOKEN_COLUMNS, rows)

    async def api_token_by_id(self, tx: Any, project_id: int, token_id: int) -> dict[str, Any] | None:
        rows = await tx.fetchall(
            f"SELECT {', '.join(TOKEN_COLUMNS)} FROM api_tokens WHERE project_id = ? AND id = ?", (project_id, token_id))
        return dict(zip(TOKEN_COLUMNS, rows[0])) if rows else None

    async def revoke_api_token(self, tx: Any, token_id: int, now: float) -> int:
        return await tx.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                (now, token_id))

    async def touch_api_token(self, token_id: int, now: float) -> None:
        await self.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, token_id))  # type: ignore[attr-defined]

    # -------------------------------------------------- one-time tokens

    async def insert_invitation(self, tx: Any, project_id: int, email: str, role: str, token_hash: str,
                                invited_by: int | None, now: float, expires_at: float) -> int:
        rows = await tx.fetchall(
            "INSERT INTO invitations (project_id, email, role, token_hash, invited_by, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (project_id, email, role, token_hash, invited_by, now, expires_at),
        )
        return rows[0][0]

    async def invitation_by_hash(self, tx: Any, token_hash: str) -> dict[str, Any] | None:
        rows = await tx.fetchall(
            f"SELECT {', '.join(INVITATION_COLUMNS)} FROM invitations WHERE token_hash = ?{self.for_update}",
            (token_hash,))
        return dict(zip(INVITATION_COLUMNS, rows[0])) if rows else None

    async def invitation_email_tx(self, tx: Any, project_id: int, invitation_id: int) -> str | None:
        rows = await tx.fetchall("SELECT email FROM invitations WHERE id = ? AND project_id = ?",
                                 (invitation_id, project_id))
        return rows[0][0] if rows else None

    async def list_invitations(self, project_id: int) -> list[dict[str, Any]]:
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"SELECT {', '.join(INVITATION_COLUMNS)} FROM invitations WHERE project_id = ? ORDER BY created_at DESC",
            (project_id,))
        return _dicts(INVITATION_COLUMNS, rows)

    async def close_invitation(self, tx: Any, invitation_id: int, now: float, column: str = "used_at") -> int:
        """Mark an open invitation used (or revoked); 0 when it was not open."""
        assert column in ("used_at", "revoked_at")
        return await tx.execute(
            f"UPDATE invitations SET {column} = ? WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL",
            (now, invitation_id))

    async def insert_reset(self, tx: Any, user_id: int, token_hash: str, now: float, expires_at: float) -> None:
        await tx.execute(
            "INSERT INTO password_resets (user_id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (user_id, token_hash, now, expires_at))

    async def recent_resets(self, user_id: int, since: float) -> int:
        row = await self.fetchone(  # type: ignore[attr-defined]
            "SELECT COUNT(*) FROM password_resets WHERE user_id = ? AND created_at >= ?", (user_id, since))
        return row[0] if row else 0

    async def one_time_token(self, tx: Any, table: str, token_hash: str) -> dict[str, Any] | None:
        """A password-reset or setup token row, locked for this transaction."""
        assert table in ("password_resets", "setup_tokens")
        extra = ", user_id" if table == "password_resets" else ""
        rows = await tx.fetchall(
            f"SELECT id, expires_at, used_at{extra} FROM {table} WHERE token_hash = ?{self.for_update}", (token_hash,))
        if not rows:
            return None
        return dict(zip(("id", "expires_at", "used_at", "user_id"), rows[0]))

    async def use_one_time_token(self, tx: Any, table: str, token_id: int, now: float) -> int:
        assert table in ("password_resets", "setup_tokens")
        return await tx.execute(f"UPDATE {table} SET used_at = ? WHERE id = ? AND used_at IS NULL", (now, token_id))

    async def void_password_resets(self, tx: Any, user_id: int, now: float) -> int:
        """Mark every open reset token of a user used (its password just changed)."""
        return await tx.execute("UPDATE password_resets SET used_at = ? WHERE user_id = ? AND used_at IS NULL",
                                (now, user_id))

    async def insert_setup_token(self, token_hash: str, now: float, expires_at: float) -> None:
        async def tx_fn(tx: Any) -> None:
            # One live setup token at a time: a restart prints a new one.
            await tx.execute("UPDATE setup_tokens SET used_at = ? WHERE used_at IS NULL", (now,))
            await tx.execute("INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES (?, ?, ?)",
                             (token_hash, now, expires_at))

        await self.write(tx_fn)  # type: ignore[attr-defined]

    # -------------------------------------------------- login failures

    async def record_login_failure(self, account: str, source: str, now: float, keep_s: float) -> None:
        async def tx_fn(tx: Any) -> None:
            await tx.execute("INSERT INTO login_failures (account, source, ts) VALUES (?, ?, ?)", (account, source, now))
            await tx.execute("DELETE FROM login_failures WHERE ts < ?", (now - keep_s,))

        await self.write(tx_fn)  # type: ignore[attr-defined]

    async def login_failures(self, column: str, value: str, since: float) -> tuple[int, float | None]:
        """Failures for one account (or source) since ``since``: count and the oldest time."""
        assert column in ("account", "source")
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"SELECT COUNT(*), MIN(ts) FROM login_failures WHERE {column} = ? AND ts >= ?", (value, since))
        return (row[0], row[1]) if row else (0, None)

    async def clear_login_failures(self, account: str) -> None:
        await self.execute("DELETE FROM login_failures WHERE account = ?", (account,))  # type: ignore[attr-defined]

    # -------------------------------------------------- agents

    async def insert_agent(self, tx: Any, project_id: int, name: str, token_hash: str, frame_key: bytes,
                           now: float) -> int:
        if await tx.fetchall("SELECT id FROM agents WHERE project_id = ? AND name = ?", (project_id, name)):
            raise Conflict(f"an agent named {name!r} already exists in this project", code="agent_exists")
        rows = await tx.fetchall(
            "INSERT INTO agents (project_id, name, token_hash, frame_key, created_at) VALUES (?, ?, ?, ?, ?) "
            "RETURNING id", (project_id, name, token_hash, frame_key, now))
        return rows[0][0]

    async def agent_in_project(self, tx: Any, project_id: int, agent_id: int) -> dict[str, Any] | None:
        rows = await tx.fetchall(
            f"SELECT id, name, revoked_at FROM agents WHERE project_id = ? AND id = ?{self.for_update}",
            (project_id, agent_id))
        return dict(zip(("id", "name", "revoked_at"), rows[0])) if rows else None

    async def revoke_agent(self, tx: Any, agent_id: int, now: float) -> int:
        return await tx.execute("UPDATE agents SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, agent_id))

    async def rotate_agent(self, tx: Any, agent_id: int, token_hash: str, frame_key: bytes) -> int:
        return await tx.execute("UPDATE agents SET token_hash = ?, frame_key = ? WHERE id = ?",
                                (token_hash, frame_key, agent_id))

    # -------------------------------------------------- audit chain

    async def audit_append(self, tx: Any, row: dict[str, Any], seal: Callable[[str, dict[str, Any]], str]) -> dict[str, Any]:
        """Append ``row`` to its project's chain under a lock on the chain head.

        ``seal(prev_hash, row)`` computes the row's MAC; ``seq``, ``prev_hash``
        and ``hash`` are filled in here.
        """
        project_id = row["project_id"]
        head = await self.audit_lock_head(tx, project_id)
        if head is None:
            await tx.execute(self.insert_ignore_sql("audit_heads", ("project_id", "seq", "hash"), "project_id"),
                             (project_id, 0, "0" * 64))
            head = await self.audit_lock_head(tx, project_id)
            assert head is not None
        seq, prev = head[0] + 1, head[1]
        row = {**row, "seq": seq, "prev_hash": prev}
        row["hash"] = seal(prev, row)
        cols = AUDIT_COLUMNS[1:]
        rows = await tx.fetchall(
            f"INSERT INTO audit_log ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) RETURNING id",
            [row[c] for c in cols])
        await tx.execute("UPDATE audit_heads SET seq = ?, hash = ? WHERE project_id = ?", (seq, row["hash"], project_id))
        return {**row, "id": rows[0][0]}

    def insert_ignore_sql(self, table: str, columns: Sequence[str], conflict: str) -> str:
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
                f"ON CONFLICT ({conflict}) DO NOTHING")

    async def audit_rows(self, project_id: int, after_seq: int | None = None, tx: Any = None) -> list[dict[str, Any]]:
        """A chain's rows in seq order (after ``after_seq``), inside ``tx`` when given."""
        sql = f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log WHERE project_id = ?"
        params: list[Any] = [project_id]
        if after_seq is not None:
            sql += " AND seq > ?"
            params.append(after_seq)
        rows = await (tx or self).fetchall(sql + " ORDER BY seq", params)  # type: ignore[attr-defined]
        return _dicts(AUDIT_COLUMNS, rows)

    async def audit_lock_head(self, tx: Any, project_id: int) -> tuple[int, str] | None:
        """The chain head, locked until ``tx`` ends (appenders wait)."""
        rows = await tx.fetchall(f"SELECT seq, hash FROM audit_heads WHERE project_id = ?{self.for_update}",
                                 (project_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def audit_prune_bounds(self, tx: Any, project_id: int, keep_after_ts: float) -> tuple[int | None, int | None]:
        """(first stored seq, first seq of a row at or after ``keep_after_ts``) of a chain."""
        rows = await tx.fetchall("SELECT MIN(seq), MIN(CASE WHEN ts >= ? THEN seq END) FROM audit_log "
                                 "WHERE project_id = ?", (keep_after_ts, project_id))
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    async def audit_hash_at(self, tx: Any, project_id: int, seq: int) -> str | None:
        rows = await tx.fetchall("SELECT hash FROM audit_log WHERE project_id = ? AND seq = ?", (project_id, seq))
        return rows[0][0] if rows else None

    async def audit_list(self, project_id: int, *, action: str | None = None, actor: str | None = None,
                         outcome: str | None = None, since: float | None = None, until: float | None = None,
                         before_seq: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ["project_id = ?"], [project_id]
        for column, value in (("action", action), ("actor", actor), ("outcome", outcome)):
            if value is not None:
                if column == "action" and value.endswith("*"):
                    where.append("action LIKE ? ESCAPE '\\'")  # SQLite has no default escape character
                    params.append(value[:-1].replace("%", "").replace("_", "\\_") + "%")
                    continue
                where.append(f"{column} = ?")
                params.append(value)
        for clause, value in (("ts >= ?", since), ("ts < ?", until), ("seq < ?", before_seq)):
            if value is not None:
                where.append(clause)
                params.append(value)
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
            [*params, limit])
        return _dicts(AUDIT_COLUMNS, rows)

    async def audit_head(self, project_id: int) -> tuple[int, str] | None:
        row = await self.fetchone("SELECT seq, hash FROM audit_heads WHERE project_id = ?", (project_id,))  # type: ignore[attr-defined]
        return (row[0], row[1]) if row else None

    async def audit_chains(self) -> list[int]:
        rows = await self.fetchall("SELECT project_id FROM audit_heads ORDER BY project_id")  # type: ignore[attr-defined]
        return [r[0] for r in rows]

    async def insert_checkpoint(self, tx: Any, cp: dict[str, Any]) -> int:
        cols = CHECKPOINT_COLUMNS[1:]
        rows = await tx.fetchall(
            f"INSERT INTO audit_checkpoints ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) RETURNING id",
            [cp[c] for c in cols])
        return rows[0][0]

    async def checkpoints(self, project_id: int, limit: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM audit_checkpoints WHERE project_id = ? ORDER BY seq DESC, id DESC"
        params: list[Any] = [project_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return _dicts(CHECKPOINT_COLUMNS, await self.fetchall(sql, params))  # type: ignore[attr-defined]

    async def audit_delete_through(self, tx: Any, project_id: int, seq: int) -> int:
        """Retention: drop rows up to ``seq`` (a signed checkpoint's seq anchors the rest)."""
        return await tx.execute("DELETE FROM audit_log WHERE project_id = ? AND seq <= ?", (project_id, seq))
