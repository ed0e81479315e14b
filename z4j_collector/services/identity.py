"""Users, sessions, login throttling, first-boot setup, API tokens and who
may act on which project.

Every change is written together with its audit row (services/audit.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from z4j_collector import roles
from z4j_collector.errors import CollectorError, Forbidden, NotFound, RateLimited, Unauthorized
from z4j_collector.services import secrets as sec
from z4j_collector.services.audit import INSTANCE, Actor, Audit
from z4j_collector.settings import Settings
from z4j_collector.store.base import SqlStore
from z4j_collector.store.identity import UserRow

_TOUCH_EVERY_S = 30.0  # last-used times are written at most this often
MAX_TOKEN_DAYS = 365


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user's session, a user's API token, or a
    project service token (``z4j admin create-token``, no user)."""

    kind: str
    """session · token"""
    credential_id: int
    user_id: int | None
    name: str
    is_superuser: bool = False
    token_project_id: int | None = None
    token_role: str | None = None
    source: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(self.name if self.user_id is not None else f"token:{self.name}", self.user_id, self.source)


@dataclass(frozen=True)
class Access:
    """A principal acting on one project with its effective role there."""

    principal: Principal
    project_id: int
    project: str
    role: str

    @property
    def actor(self) -> Actor:
        return self.principal.actor

    def has(self, role: str) -> bool:
        return roles.at_least(self.role, role)


@dataclass(frozen=True)
class LoginResult:
    token: str
    session_id: int
    expires_at: float
    user: UserRow


def user_view(user: UserRow) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name, "is_superuser": user.is_superuser,
            "created_at": user.created_at, "disabled_at": user.disabled_at}


class Identity:
    def __init__(self, store: SqlStore, audit: Audit, settings: Settings) -> None:
        self.store = store
        self.audit = audit
        self.settings = settings

    # ------------------------------------------------------------ users

    async def create_user(self, actor: Actor, email: str, password: str, name: str = "", superuser: bool = False,
                          project_id: int | None = None, role: str | None = None) -> int:
        email = sec.check_email(email)
        password_hash = await sec.hash_password(sec.check_password(password))
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            user_id = await self.store.insert_user(tx, email, name.strip()[:200], password_hash, superuser, now)
            await self.audit.record(tx, actor.entry(INSTANCE, "user.create", f"user:{email}", superuser=superuser), now)
            if project_id is not None and role is not None:
                await self.store.set_membership(tx, project_id, user_id, role, now)
                await self.audit.record(tx, actor.entry(project_id, "member.add", f"user:{email}", role=role), now)
            return user_id

        return await self.store.write(tx_fn)

    async def set_password(self, actor: Actor, user: UserRow, password: str, keep_session: int | None = None,
                           action: str = "user.password") -> None:
        """New password; every session (but ``keep_session``) and, on a reset, every API token ends."""
        password_hash = await sec.hash_password(sec.check_password(password))
        now = time.time()
        await self.store.write(lambda tx: self.password_changed(tx, actor, user, password_hash, now, keep_session,
                                                                action))

    async def password_changed(self, tx: Any, actor: Actor, user: UserRow, password_hash: str, now: float,
                               keep_session: int | None = None, action: str = "user.password") -> None:
        """Inside a write transaction: store the new hash, end every session (but
        ``keep_session``), on a reset every API token too, and void open reset links."""
        await self.store.set_password(tx, user.id, password_hash, now)
        ended = await self.store.revoke_user_credentials(tx, user.id, now, tokens=action == "user.password_reset",
                                                         keep_session=keep_session)
        await self.store.void_password_resets(tx, user.id, now)
        await self.audit.record(tx, actor.entry(INSTANCE, action, f"user:{user.email}", credentials_ended=ended), now)

    async def open_one_time(self, tx: Any, table: str, token: str, now: float, use: bool = False) -> dict[str, Any]:
        """A live setup or password-reset token (used up when ``use``); Unauthorized otherwise."""
        row = await self.store.one_time_token(tx, table, sec.token_hash(token or ""))
        live = row is not None and row["used_at"] is None and row["expires_at"] > now
        if not live or (use and not await self.store.use_one_time_token(tx, table, row["id"], now)):
            if table == "setup_tokens":
                raise Unauthorized("unknown, used or expired setup token; restart `z4j serve` for a new one",
                                   code="bad_setup_token")
            raise Unauthorized("unknown, used or expired reset token", code="bad_reset_token")
        return row  # type: ignore[return-value]

    async def update_user(self, actor: Actor, user_id: int, disabled: bool | None, superuser: bool | None) -> UserRow:
        user = await self.store.user_by_id(user_id)
        if user is None:
            raise NotFound(f"no user {user_id}")
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            if disabled is not None:
                await self.store.set_user_disabled(tx, user_id, now if disabled else None)
                if disabled:
                    await self.store.revoke_user_credentials(tx, user_id, now)
                action = "user.disable" if disabled else "user.enable"
                await self.audit.record(tx, actor.entry(INSTANCE, action, f"user:{user.email}"), now)
            if superuser is not None:
                await self.store.set_superuser(tx, user_id, superuser)
                await self.audit.record(tx, actor.entry(INSTANCE, "user.superuser", f"user:{user.email}",
                                                        superuser=superuser), now)

        await self.store.write(tx_fn)
        return await self.store.user_by_id(user_id)  # type: ignore[return-value]

    # ------------------------------------------------------------ first boot

    async def issue_setup_token(self) -> str | None:
        """A one-time setup token when no user exists yet (printed by ``z4j serve``)."""
        if await self.store.count_users():
            return None
        token, digest = sec.new_token("setup")
        now = time.time()
        await self.store.insert_setup_token(digest, now, now + self.settings.setup_ttl_s)
        return token

    async def redeem_setup(self, token: str, email: str, password: str, name: str, source: str | None,
                           user_agent: str | None = None) -> LoginResult:
        email = sec.check_email(email)
        sec.check_password(password)
        # A wrong token costs no password hash (64 MiB and a core's time).
        await self.store.write(lambda tx: self.open_one_time(tx, "setup_tokens", token, time.time()))
        password_hash = await sec.hash_password(password)
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            await self.open_one_time(tx, "setup_tokens", token, now, use=True)
            if await self.store.user_id_tx(tx, None) is not None:
                raise Forbidden("setup is done: a user already exists", code="setup_done")
            user_id = await self.store.insert_user(tx, email, name.strip()[:200], password_hash, True, now)
            actor = Actor(email, user_id, source)
            await self.audit.record(tx, actor.entry(INSTANCE, "setup.first_user", f"user:{email}", superuser=True), now)
            default = await self.store.project_id("default")
            if default is not None:
                await self.store.set_membership(tx, default, user_id, "owner", now)
                await self.audit.record(tx, actor.entry(default, "member.add", f"user:{email}", role="owner"), now)
            return user_id

        user_id = await self.store.write(tx_fn)
        user = await self.store.user_by_id(user_id)
        assert user is not None
        return await self._new_session(user, source, user_agent)

    # ------------------------------------------------------------ login

    async def login(self, email: str, password: str, source: str, user_agent: str | None = None) -> LoginResult:
        account = (email or "").strip().lower()[:320]
        now = time.time()
        window = self.settings.login_window_s
        await self._throttle("account", account, self.settings.login_max_failures, now, window,
                             "too many failed logins for this account")
        await self._throttle("source", source, self.settings.login_max_failures_source, now, window,
                             "too many failed logins from this address")
        user = await self.store.user_by_email(account)
        ok, rehash = await sec.verify_password(user.password_hash if user else None, password or "")
        if not ok or user is None or user.disabled_at is not None:
            await self.store.record_login_failure(account, source, now, keep_s=max(window, 3600))
            await self.audit.write(Actor(account or "(empty)", user.id if user else None, source).entry(
                INSTANCE, "auth.login", f"user:{account}", outcome="denied"))
            raise Unauthorized("wrong e-mail or password", code="bad_credentials")
        await self.store.clear_login_failures(account)
        if rehash is not None:
            await self.store.write(lambda tx: self.store.set_password(tx, user.id, rehash, user.password_changed_at or now))
        return await self._new_session(user, source, user_agent)

    async def _throttle(self, column: str, value: str, limit: int, now: float, window: float, what: str) -> None:
        count, oldest = await self.store.login_failures(column, value, now - window)
        if count >= limit and oldest is not None:
            wait = oldest + window - now
            raise RateLimited(f"{what}: try again in {max(1, int(wait + 0.999))} s", retry_after=wait)

    async def _new_session(self, user: UserRow, source: str | None, user_agent: str | None) -> LoginResult:
        token, digest = sec.new_token("session")
        now = time.time()
        expires_at = now + self.settings.session_max_s

        async def tx_fn(tx: Any) -> int:
            session_id = await self.store.insert_session(tx, user.id, digest, now, expires_at,
                                                         self.settings.session_idle_s, source, user_agent)
            await self.audit.record(tx, Actor(user.email, user.id, source).entry(
                INSTANCE, "auth.login", f"user:{user.email}", session=session_id), now)
            return session_id

        session_id = await self.store.write(tx_fn)
        return LoginResult(token, session_id, expires_at, user)

    async def logout(self, principal: Principal) -> None:
        if principal.kind == "session" and principal.user_id is not None:
            await self.end_session(principal, principal.user_id, principal.credential_id, action="auth.logout")

    async def end_session(self, principal: Principal, user_id: int, session_id: int,
                          action: str = "session.revoke") -> None:
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            n = await self.store.revoke_session(tx, session_id, user_id, now)
            if n:
                await self.audit.record(tx, principal.actor.entry(INSTANCE, action, f"session:{session_id}",
                                                                  user_id=user_id), now)
            return n

        if not await self.store.write(tx_fn):
            raise NotFound(f"no live session {session_id}")

    async def end_all_sessions(self, principal: Principal, user: UserRow) -> int:
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            n = await self.store.revoke_user_credentials(tx, user.id, now, tokens=False)
            await self.audit.record(tx, principal.actor.entry(INSTANCE, "session.revoke_all", f"user:{user.email}",
                                                              sessions=n), now)
            return n

        return await self.store.write(tx_fn)

    # ------------------------------------------------------------ who is calling

    async def authenticate(self, token: str | None, source: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing credentials (Authorization: Bearer <session or API token>)")
        now = time.time()
        digest = sec.token_hash(token)
        if token.startswith(sec.PREFIXES["session"]):
            session = await self.store.session_by_hash(digest)
            if session is None or session["revoked_at"] is not None:
                raise Unauthorized("unknown or ended session: log in again", code="session_ended")
            if session["expires_at"] <= now:
                raise Unauthorized("session reached its maximum lifetime: log in again", code="session_expired")
            if session["last_used_at"] + session["idle_s"] <= now:
                raise Unauthorized(f"session idle for more than {session['idle_s']:g} s: log in again",
                                   code="session_expired")
            user = await self._live_user(session["user_id"])
            # Written at most every 30 s, but often enough for a short idle limit.
            if now - session["last_used_at"] > min(_TOUCH_EVERY_S, session["idle_s"] / 4):
                await self.store.touch_session(session["id"], now)
            return Principal("session", session["id"], user.id, user.email, user.is_superuser, source=source)
        row = await self.store.api_token_by_hash(digest)
        if row is None or row["revoked_at"] is not None:
            raise Unauthorized("unknown or revoked API token", code="bad_token")
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise Unauthorized("API token has expired", code="token_expired")
        name, superuser = row["name"], False
        if row["user_id"] is not None:
            user = await self._live_user(row["user_id"])
            name, superuser = user.email, user.is_superuser
        if row["last_used_at"] is None or now - row["last_used_at"] > _TOUCH_EVERY_S:
            await self.store.touch_api_token(row["id"], now)
        return Principal("token", row["id"], row["user_id"], name, superuser, row["project_id"], row["role"], source)

    async def _live_user(self, user_id: int) -> UserRow:
        user = await self.store.user_by_id(user_id)
        if user is None or user.disabled_at is not None:
            raise Unauthorized("this account is disabled", code="account_disabled")
        return user

    async def access(self, principal: Principal, project: str) -> Access:
        """The principal's effective role on ``project``; NotFound when it has none."""
        row = await self.store.project_by_slug(project)
        role: str | None = None
        if row is not None:
            role = await self.user_role(principal.user_id, principal.is_superuser, row["id"])
            if principal.kind == "token":
                if principal.token_project_id != row["id"]:
                    role = None
                elif principal.user_id is None:
                    role = principal.token_role
                else:  # a token never exceeds its owner's role of today
                    role = roles.lowest(principal.token_role, role)
        if row is None or role is None:
            raise NotFound(f"no project {project!r}")  # other projects do not exist for this caller
        return Access(principal, row["id"], row["slug"], role)

    async def user_role(self, user_id: int | None, superuser: bool, project_id: int) -> str | None:
        if superuser:
            return "owner"
        if user_id is None:
            return None
        return await self.store.membership_role(user_id, project_id)

    # ------------------------------------------------------------ API tokens

    async def create_api_token(self, access: Access, name: str, role: str, expires_days: float) -> dict[str, Any]:
        principal = access.principal
        if principal.user_id is None:
            raise Forbidden("service tokens cannot mint tokens; log in as a user", code="no_user")
        roles.check_role(role)
        if not access.has(role):
            raise Forbidden(f"a token's role cannot exceed yours ({access.role})", code="role_too_high")
        if not 0 < expires_days <= MAX_TOKEN_DAYS:
            raise CollectorError(f"expires_days must be more than 0 and at most {MAX_TOKEN_DAYS}", code="bad_expiry")
        name = name.strip()
        if not name or len(name) > 200:
            raise CollectorError("token name must be 1 to 200 characters", code="bad_name")
        token, digest = sec.new_token("api")
        now = time.time()
        expires_at = now + expires_days * 86400

        async def tx_fn(tx: Any) -> int:
            token_id = await self.store.insert_api_token(tx, access.project_id, principal.user_id, name, role, digest,
                                                         now, expires_at)
            await self.audit.record(tx, access.actor.entry(access.project_id, "token.create", f"token:{token_id}",
                                                           name=name, role=role, expires_at=expires_at), now)
            return token_id

        token_id = await self.store.write(tx_fn)
        return {"id": token_id, "name": name, "role": role, "project": access.project, "token": token,
                "created_at": now, "expires_at": expires_at}

    async def revoke_api_token(self, access: Access, token_id: int) -> None:
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            row = await self.store.api_token_by_id(tx, access.project_id, token_id)
            mine = row is not None and row["user_id"] is not None and row["user_id"] == access.principal.user_id
            if row is None or not (mine or access.has("admin")):
                raise NotFound(f"no API token {token_id}")
            if not await self.store.revoke_api_token(tx, token_id, now):
                raise NotFound(f"API token {token_id} is already revoked")
            await self.audit.record(tx, access.actor.entry(access.project_id, "token.revoke", f"token:{token_id}",
                                                           name=row["name"]), now)

        await self.store.write(tx_fn)
