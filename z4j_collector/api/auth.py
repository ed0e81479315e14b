"""Authentication: first-boot setup, login/logout, own sessions and password,
password reset, accepting an invitation."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.response import Response

from z4j_collector import roles
from z4j_collector.errors import Forbidden, NotFound, Unauthorized
from z4j_collector.guards import principal_of, source_of
from z4j_collector.services import secrets as sec
from z4j_collector.services.identity import LoginResult, user_view


class LoginRequest(msgspec.Struct):
    email: str
    password: str


class SetupRequest(msgspec.Struct):
    token: str
    email: str
    password: str
    name: str = ""


class PasswordChange(msgspec.Struct):
    current_password: str
    new_password: str


class ResetRequest(msgspec.Struct):
    email: str


class ResetComplete(msgspec.Struct):
    token: str
    password: str


class AcceptInvitation(msgspec.Struct):
    token: str
    password: str | None = None
    name: str = ""


class LoginResponse(msgspec.Struct):
    token: str
    session_id: int
    expires_at: float
    user: dict[str, Any]


def _login(result: LoginResult) -> LoginResponse:
    return LoginResponse(result.token, result.session_id, result.expires_at, user_view(result.user))


def _ua(request: Request) -> str | None:
    return request.headers.get("user-agent")


RESET_MESSAGE = "if that address has an account, a reset link is on its way"


class AuthController(Controller):
    path = "/api/v1"
    tags = ["auth"]

    @get("/setup", opt={"permission": "public"}, summary="Whether first-boot setup is still needed")
    async def setup_needed(self, request: Request) -> dict[str, bool]:
        return {"needed": await request.app.state.store.count_users() == 0}

    @post("/setup", opt={"permission": "public"}, summary="Create the first superuser with the setup token",
          status_code=201)
    async def setup(self, request: Request, data: SetupRequest) -> LoginResponse:
        result = await request.app.state.identity.redeem_setup(
            data.token, data.email, data.password, data.name, source_of(request), _ua(request))
        return _login(result)

    @post("/auth/login", opt={"permission": "public"}, summary="Log in; returns a session token", status_code=200)
    async def login(self, request: Request, data: LoginRequest) -> LoginResponse:
        result = await request.app.state.identity.login(data.email, data.password, source_of(request), _ua(request))
        return _login(result)

    @post("/auth/logout", opt={"permission": "user"}, summary="End this session", status_code=204)
    async def logout(self, request: Request) -> None:
        await request.app.state.identity.logout(principal_of(request))

    @get("/auth/me", opt={"permission": "user"}, summary="Who am I, and my projects with my role")
    async def me(self, request: Request) -> dict[str, Any]:
        principal = principal_of(request)
        store = request.app.state.store
        if principal.user_id is None:
            return {"user": None, "token": principal.name, "projects": []}
        user = await store.user_by_id(principal.user_id)
        projects = await store.user_projects(None if principal.is_superuser else principal.user_id)
        if principal.kind == "token":  # an API token acts with the lower of its role and its user's
            projects = [{**p, "role": roles.lowest(p["role"], principal.token_role)} for p in projects
                        if p["id"] == principal.token_project_id]
        return {"user": user_view(user), "via": principal.kind, "projects": projects}

    @get("/auth/sessions", opt={"permission": "user"}, summary="My live sessions")
    async def sessions(self, request: Request) -> list[dict[str, Any]]:
        principal = principal_of(request)
        if principal.user_id is None:
            return []
        rows = await request.app.state.store.list_sessions(principal.user_id, time.time())
        return [{**r, "current": principal.kind == "session" and r["id"] == principal.credential_id} for r in rows]

    @delete("/auth/sessions/{session_id:int}", opt={"permission": "user"}, summary="End one of my sessions",
            status_code=204)
    async def end_session(self, request: Request, session_id: int) -> None:
        principal = principal_of(request)
        if principal.user_id is None:
            raise NotFound(f"no live session {session_id}")
        await request.app.state.identity.end_session(principal, principal.user_id, session_id)

    @post("/auth/password", opt={"permission": "user"}, summary="Change my password (ends my other sessions)",
          status_code=204)
    async def change_password(self, request: Request, data: PasswordChange) -> None:
        principal = principal_of(request)
        if principal.kind != "session" or principal.user_id is None:
            raise Forbidden("change your password from a login session, not an API token")
        user = await request.app.state.store.user_by_id(principal.user_id)
        ok, _ = await sec.verify_password(user.password_hash, data.current_password)
        if not ok:
            raise Unauthorized("the current password is wrong", code="bad_credentials")
        await request.app.state.identity.set_password(principal.actor, user, data.new_password,
                                                      keep_session=principal.credential_id)

    @post("/auth/password-reset", opt={"permission": "public"}, status_code=202,
          summary="Ask for a password-reset e-mail (same answer whether or not the address exists)")
    async def request_reset(self, request: Request, data: ResetRequest) -> dict[str, str]:
        await request.app.state.membership.request_reset(data.email, source_of(request))
        return {"message": RESET_MESSAGE}

    @post("/auth/password-reset/complete", opt={"permission": "public"}, status_code=204,
          summary="Set a new password with a reset token; ends every session and API token of the account")
    async def complete_reset(self, request: Request, data: ResetComplete) -> None:
        await request.app.state.membership.complete_reset(data.token, data.password, source_of(request))

    @get("/invitations/{token:str}", opt={"permission": "public"}, summary="What an invitation offers")
    async def invitation(self, request: Request, token: str) -> dict[str, Any]:
        return await request.app.state.membership.invitation_info(token)

    @post("/invitations/accept", opt={"permission": "public"}, status_code=200,
          summary="Accept an invitation (a new user sets a password and is logged in)")
    async def accept(self, request: Request, data: AcceptInvitation) -> Response[dict[str, Any]]:
        out = await request.app.state.membership.accept(data.token, data.password, data.name, source_of(request),
                                                        _ua(request))
        return Response(out, status_code=201 if out["created_user"] else 200)
