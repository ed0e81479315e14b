"""Projects, members and their roles, invitations, password resets, agents'
credentials: the configuration changes of PRODUCT.md §5, each audited.

Role rules: an Admin invites and manages members up to Admin but cannot
touch an Admin's or Owner's membership; only an Owner manages Admins and
Owners; a project always keeps at least one Owner.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from z4j_agents import protocol as p
from z4j_collector import roles
from z4j_collector.errors import Conflict, CollectorError, Forbidden, NotFound, Unauthorized
from z4j_collector.services import secrets as sec
from z4j_collector.services.agents import AgentRegistry, raise_bad_name
from z4j_collector.services.audit import INSTANCE, Actor, Audit
from z4j_collector.services.identity import Access, Identity, LoginResult, Principal
from z4j_collector.services.mail import Mailer
from z4j_collector.store.base import SqlStore

log = logging.getLogger("z4j.collector.membership")
MAX_OPEN_RESETS = 3
"""Reset mails per account within one reset lifetime; further requests send nothing."""
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


class Membership:
    def __init__(self, store: SqlStore, audit: Audit, identity: Identity, mailer: Mailer,
                 registry: AgentRegistry | None = None) -> None:
        self.store = store
        self.audit = audit
        self.identity = identity
        self.mailer = mailer
        self.registry = registry
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        return self.identity.settings.base_url

    # ------------------------------------------------------------ projects

    async def create_project(self, principal: Principal, slug: str, name: str) -> dict[str, Any]:
        slug = (slug or "").strip()
        if not _SLUG.match(slug):
            raise CollectorError("project slug must be 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit",
                                 code="bad_slug")
        name = (name or slug).strip()[:200]
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            project_id = await self.store.insert_project(tx, slug, name, now)
            await self.audit.record(tx, principal.actor.entry(INSTANCE, "project.create", f"project:{slug}"), now)
            await self.audit.record(tx, principal.actor.entry(project_id, "project.create", f"project:{slug}"), now)
            if principal.user_id is not None:
                await self.store.set_membership(tx, project_id, principal.user_id, "owner", now)
            return project_id

        project_id = await self.store.write(tx_fn)
        return {"id": project_id, "slug": slug, "name": name, "created_at": now, "role": "owner"}

    async def delete_project(self, access: Access, confirm: str) -> None:
        if confirm != access.project:
            raise CollectorError(f"to delete the project, confirm with its slug {access.project!r}", code="confirm")
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            await self.store.delete_project(tx, access.project_id)
            # The project's own chain goes with it; the instance chain remembers.
            await self.audit.record(tx, access.actor.entry(INSTANCE, "project.delete", f"project:{access.project}"), now)

        await self.store.write(tx_fn)

    # ------------------------------------------------------------ members

    def _may_manage(self, access: Access, current: str | None, new: str | None) -> None:
        if access.role == "owner":
            return
        if current in ("admin", "owner"):
            raise Forbidden(f"only an owner can change a member who is {current}")
        if new is not None and not roles.at_least("admin", new):
            raise Forbidden("only an owner can grant the owner role")
        if new is not None and not access.has(new):
            raise Forbidden(f"you cannot grant a role above your own ({access.role})")

    async def set_role(self, access: Access, user_id: int, role: str) -> None:
        roles.check_role(role)
        user = await self.store.user_by_id(user_id)
        if user is None:
            raise NotFound(f"no user {user_id}")
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            current = await self.store.member_role_tx(tx, access.project_id, user_id)
            self._may_manage(access, current, role)
            if current == "owner" and role != "owner" and await self.store.count_owners(tx, access.project_id) <= 1:
                raise Conflict("a project keeps at least one owner: make someone else owner first", code="last_owner")
            await self.store.set_membership(tx, access.project_id, user_id, role, now)
            action = "member.add" if current is None else "member.role"
            await self.audit.record(tx, access.actor.entry(access.project_id, action, f"user:{user.email}",
                                                           role=role, previous=current), now)

        await self._member_change(access, "member.role", f"user:{user.email}", tx_fn, role=role)

    async def remove_member(self, access: Access, user_id: int) -> None:
        user = await self.store.user_by_id(user_id)
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            current = await self.store.member_role_tx(tx, access.project_id, user_id)
            if user is None or current is None:
                raise NotFound(f"user {user_id} is not a member of {access.project!r}")
            self._may_manage(access, current, None)
            if current == "owner" and await self.store.count_owners(tx, access.project_id) <= 1:
                raise Conflict("a project keeps at least one owner", code="last_owner")
            await self.store.delete_membership(tx, access.project_id, user_id)
            await self.audit.record(tx, access.actor.entry(access.project_id, "member.remove", f"user:{user.email}",
                                                           previous=current), now)

        await self._member_change(access, "member.remove", f"user:{user.email if user else user_id}", tx_fn)

    async def _member_change(self, access: Access, action: str, target: str, tx_fn: Any, **detail: Any) -> None:
        """Run a membership change; one the role rules refuse is audited too
        (outcome ``denied`` for 403, ``refused`` for 409) before the error goes back."""
        try:
            await self.store.write(tx_fn)
        except (Forbidden, Conflict) as exc:
            outcome = "denied" if isinstance(exc, Forbidden) else "refused"
            await self.audit.write(access.actor.entry(access.project_id, action, target, outcome=outcome,
                                                      reason=exc.message, **detail))
            raise

    # ------------------------------------------------------------ invitations

    async def invite(self, access: Access, email: str, role: str, expires_hours: float | None = None) -> dict[str, Any]:
        email = sec.check_email(email)
        roles.check_role(role)
        refusal = None
        if role == "owner" and access.role != "owner":
            refusal = Forbidden("only an owner can invite an owner")
        elif not access.has(role):
            refusal = Forbidden(f"you cannot invite above your own role ({access.role})")
        if refusal is not None:
            await self.audit.write(access.actor.entry(access.project_id, "invitation.create", f"user:{email}",
                                                      outcome="denied", reason=refusal.message, role=role))
            raise refusal
        ttl = self.identity.settings.invite_ttl_s if expires_hours is None else expires_hours * 3600
        if not 0 < ttl <= 30 * 86400:
            raise CollectorError("an invitation expires within 30 days", code="bad_expiry")
        token, digest = sec.new_token("invite")
        now = time.time()
        principal = access.principal

        async def tx_fn(tx: Any) -> int:
            invitation_id = await self.store.insert_invitation(tx, access.project_id, email, role, digest,
                                                               principal.user_id, now, now + ttl)
            await self.audit.record(tx, access.actor.entry(access.project_id, "invitation.create", f"user:{email}",
                                                           role=role, invitation=invitation_id), now)
            return invitation_id

        invitation_id = await self.store.write(tx_fn)
        url = f"{self.base_url}/api/v1/invitations/{token}"
        body = (
            f"{principal.name} invites you to the z4j project {access.project!r} as {role}.\n\n"
            f"Accept it from a terminal (you choose your password there):\n\n"
            f"    z4j accept-invite --url {self.base_url} {token}\n\n"
            f"or POST {self.base_url}/api/v1/invitations/accept with {{\"token\": \"{token}\", \"password\": …}}.\n"
            f"Invitation link: {url}\n\nIt works once and expires at {_iso(now + ttl)}.\n"
        )
        emailed = await self.mailer.send(email, f"z4j: invitation to {access.project}", body)
        return {"id": invitation_id, "email": email, "role": role, "project": access.project, "token": token,
                "url": url, "expires_at": now + ttl, "emailed": emailed}

    async def invitation_info(self, token: str) -> dict[str, Any]:
        """What an invitation offers (without using it)."""

        async def tx_fn(tx: Any) -> dict[str, Any]:
            return await self._open_invitation(tx, token, time.time())

        row = await self.store.write(tx_fn)
        return {"email": row["email"], "role": row["role"], "project": row["project"], "expires_at": row["expires_at"],
                "existing_user": await self.store.user_by_email(row["email"]) is not None}

    async def _open_invitation(self, tx: Any, token: str, now: float) -> dict[str, Any]:
        row = await self.store.invitation_by_hash(tx, sec.token_hash(token or ""))
        if row is None or row["used_at"] is not None or row["revoked_at"] is not None or row["expires_at"] <= now:
            raise Unauthorized("unknown, used, revoked or expired invitation", code="bad_invitation")
        return {**row, "project": await self.store.project_slug_tx(tx, row["project_id"]) or "?"}

    async def accept(self, token: str, password: str | None, name: str, source: str | None,
                     user_agent: str | None = None) -> dict[str, Any]:
        """Join the project; a new user sets a password here and is logged in
        (an existing user keeps their password: one sent along is ignored)."""
        # A wrong token costs no password hash (64 MiB and a core's time).
        offer = await self.store.write(lambda tx: self._open_invitation(tx, token, time.time()))
        password_hash = None
        if await self.store.user_by_email(offer["email"]) is None:
            if not password:
                raise CollectorError("choose a password to create your account", code="weak_password")
            password_hash = await sec.hash_password(sec.check_password(password))
        now = time.time()

        async def tx_fn(tx: Any) -> tuple[dict[str, Any], int, bool, str]:
            row = await self._open_invitation(tx, token, now)
            existing = await self.store.user_id_tx(tx, row["email"])
            if existing is not None:
                user_id, created = existing, False
            else:
                if password_hash is None:
                    raise Conflict("the account changed while joining: try again", code="retry")
                user_id, created = await self.store.insert_user(tx, row["email"], name.strip()[:200], password_hash,
                                                                False, now), True
            if not await self.store.close_invitation(tx, row["id"], now):
                raise Unauthorized("unknown, used, revoked or expired invitation", code="bad_invitation")
            current = await self.store.member_role_tx(tx, row["project_id"], user_id)
            role = row["role"] if current is None or roles.rank(row["role"]) > roles.rank(current) else current
            await self.store.set_membership(tx, row["project_id"], user_id, role, now)
            actor = Actor(row["email"], user_id, source)
            if created:
                await self.audit.record(tx, actor.entry(INSTANCE, "user.create", f"user:{row['email']}",
                                                        invitation=row["id"]), now)
            await self.audit.record(tx, actor.entry(row["project_id"], "invitation.accept", f"user:{row['email']}",
                                                    role=role, invitation=row["id"]), now)
            return row, user_id, created, role

        row, user_id, created, role = await self.store.write(tx_fn)
        out: dict[str, Any] = {"project": row["project"], "role": role, "email": row["email"],
                               "created_user": created}
        if created:
            user = await self.store.user_by_id(user_id)
            assert user is not None
            login: LoginResult = await self.identity._new_session(user, source, user_agent)
            out.update(token=login.token, expires_at=login.expires_at)
        return out

    async def revoke_invitation(self, access: Access, invitation_id: int) -> None:
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            email = await self.store.invitation_email_tx(tx, access.project_id, invitation_id)
            if email is None or not await self.store.close_invitation(tx, invitation_id, now, column="revoked_at"):
                raise NotFound(f"no open invitation {invitation_id}")
            await self.audit.record(tx, access.actor.entry(access.project_id, "invitation.revoke",
                                                           f"user:{email}", invitation=invitation_id), now)

        await self.store.write(tx_fn)

    # ------------------------------------------------------------ password reset

    async def request_reset(self, email: str, source: str | None) -> None:
        """Always the same answer and about the same time: the mail goes out in the background."""
        account = (email or "").strip().lower()[:320]
        token, digest = sec.new_token("reset")
        user = await self.store.user_by_email(account)
        if user is None or user.disabled_at is not None:
            return
        now = time.time()
        ttl = self.identity.settings.reset_ttl_s
        if await self.store.recent_resets(user.id, now - ttl) >= MAX_OPEN_RESETS:
            return  # no mailbox flooding: the links already sent still work

        async def tx_fn(tx: Any) -> None:
            await self.store.insert_reset(tx, user.id, digest, now, now + ttl)
            await self.audit.record(tx, Actor("(anonymous)", None, source).entry(
                INSTANCE, "user.password_reset_request", f"user:{user.email}"), now)

        await self.store.write(tx_fn)
        body = (
            f"Someone (hopefully you) asked to reset the password of {user.email} on z4j.\n\n"
            f"    z4j reset-password --url {self.base_url} {token}\n\n"
            f"or POST {self.base_url}/api/v1/auth/password-reset/complete with "
            f"{{\"token\": \"{token}\", \"password\": …}}.\n\n"
            f"It works once and expires at {_iso(now + ttl)}. A completed reset ends every session and API token "
            f"of this account. If you did not ask, ignore this message.\n"
        )
        task = asyncio.create_task(self.mailer.send(user.email, "z4j: password reset", body))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def complete_reset(self, token: str, password: str, source: str | None) -> None:
        """The token is used up in the same transaction as the password change
        (which ends every session and API token): both happen, or neither."""
        sec.check_password(password)
        identity = self.identity
        # A wrong token costs no password hash (64 MiB and a core's time).
        row = await self.store.write(lambda tx: identity.open_one_time(tx, "password_resets", token, time.time()))
        user = await self.store.user_by_id(row["user_id"])
        if user is None or user.disabled_at is not None:
            raise Unauthorized("unknown, used or expired reset token", code="bad_reset_token")
        password_hash = await sec.hash_password(password)
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            if (await identity.open_one_time(tx, "password_resets", token, now, use=True))["user_id"] != user.id:
                raise Unauthorized("unknown, used or expired reset token", code="bad_reset_token")
            await identity.password_changed(tx, Actor(user.email, user.id, source), user, password_hash, now,
                                            action="user.password_reset")

        await self.store.write(tx_fn)

    # ------------------------------------------------------------ agents

    async def create_agent(self, access: Access, name: str) -> dict[str, Any]:
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise_bad_name(name)
        token, secret = sec.PREFIXES["agent"] + secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            agent_id = await self.store.insert_agent(tx, access.project_id, name, p.token_hash(token),
                                                     p.frame_key(secret), now)
            await self.audit.record(tx, access.actor.entry(access.project_id, "agent.create", f"agent:{name}",
                                                           agent=agent_id), now)
            return agent_id

        agent_id = await self.store.write(tx_fn)
        return {"agent_id": agent_id, "project": access.project, "name": name, "token": token,
                "hmac_secret": secret, "brain_url": self.base_url}

    async def revoke_agent(self, access: Access, agent_id: int) -> None:
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            agent = await self.store.agent_in_project(tx, access.project_id, agent_id)
            if agent is None:
                raise NotFound(f"no agent {agent_id}")
            if not await self.store.revoke_agent(tx, agent_id, now):
                raise Conflict(f"agent {agent['name']!r} is already revoked", code="revoked")
            await self.audit.record(tx, access.actor.entry(access.project_id, "agent.revoke", f"agent:{agent['name']}",
                                                           agent=agent_id), now)

        await self.store.write(tx_fn)
        if self.registry is not None:
            await self.registry.disconnect(agent_id, "agent revoked")

    async def rotate_agent(self, access: Access, agent_id: int) -> dict[str, Any]:
        token, secret = sec.PREFIXES["agent"] + secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()

        async def tx_fn(tx: Any) -> str:
            agent = await self.store.agent_in_project(tx, access.project_id, agent_id)
            if agent is None:
                raise NotFound(f"no agent {agent_id}")
            if agent["revoked_at"] is not None:
                raise Conflict(f"agent {agent['name']!r} is revoked: create a new one", code="revoked")
            await self.store.rotate_agent(tx, agent_id, p.token_hash(token), p.frame_key(secret))
            await self.audit.record(tx, access.actor.entry(access.project_id, "agent.rotate", f"agent:{agent['name']}",
                                                           agent=agent_id), now)
            return agent["name"]

        name = await self.store.write(tx_fn)
        if self.registry is not None:
            await self.registry.disconnect(agent_id, "agent credentials rotated")
        return {"agent_id": agent_id, "project": access.project, "name": name, "token": token,
                "hmac_secret": secret, "brain_url": self.base_url}
