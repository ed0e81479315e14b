"""Configuration under RBAC: users (superusers), projects, members,
invitations, API tokens and agents' credentials. Every change is audited by
the services it calls."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put

from z4j_collector import roles
from z4j_collector.api.schemas import Agent
from z4j_collector.errors import NotFound
from z4j_collector.guards import access_of, principal_of
from z4j_collector.services.identity import user_view


class NewUser(msgspec.Struct):
    email: str
    password: str
    name: str = ""
    superuser: bool = False


class UserChange(msgspec.Struct):
    disabled: bool | None = None
    superuser: bool | None = None


class NewProject(msgspec.Struct):
    slug: str
    name: str = ""


class RoleChange(msgspec.Struct):
    role: str


class NewInvitation(msgspec.Struct):
    email: str
    role: str
    expires_hours: float | None = None


class NewToken(msgspec.Struct):
    name: str
    role: str
    expires_days: float = 90.0


class NewAgent(msgspec.Struct):
    name: str


class UserController(Controller):
    path = "/api/v1/users"
    tags = ["users"]

    @get("/", opt={"permission": "superuser"}, summary="Every user of the instance")
    async def list_users(self, request: Request) -> list[dict[str, Any]]:
        return await request.app.state.store.list_users()

    @post("/", opt={"permission": "superuser"}, summary="Create a user", status_code=201)
    async def create_user(self, request: Request, data: NewUser) -> dict[str, Any]:
        state = request.app.state
        user_id = await state.identity.create_user(principal_of(request).actor, data.email, data.password, data.name,
                                                   data.superuser)
        return user_view(await state.store.user_by_id(user_id))

    @patch("/{user_id:int}", opt={"permission": "superuser"}, summary="Disable/enable a user, grant superuser")
    async def update_user(self, request: Request, user_id: int, data: UserChange) -> dict[str, Any]:
        user = await request.app.state.identity.update_user(principal_of(request).actor, user_id, data.disabled,
                                                            data.superuser)
        return user_view(user)

    @get("/{user_id:int}/sessions", opt={"permission": "superuser"}, summary="A user's live sessions")
    async def user_sessions(self, request: Request, user_id: int) -> list[dict[str, Any]]:
        return await request.app.state.store.list_sessions(user_id, time.time())

    @delete("/{user_id:int}/sessions", opt={"permission": "superuser"}, summary="End every session of a user",
            status_code=204)
    async def end_sessions(self, request: Request, user_id: int) -> None:
        user = await request.app.state.store.user_by_id(user_id)
        if user is None:
            raise NotFound(f"no user {user_id}")
        await request.app.state.identity.end_all_sessions(principal_of(request), user)


class ProjectController(Controller):
    path = "/api/v1/projects"
    tags = ["projects"]

    @get("/", opt={"permission": "user"}, summary="Projects I can see, with my role")
    async def list_projects(self, request: Request) -> list[dict[str, Any]]:
        principal = principal_of(request)
        store = request.app.state.store
        if principal.user_id is None:  # a service token sees its project
            rows = [p for p in await store.user_projects(None) if p["id"] == principal.token_project_id]
            return [{**p, "role": principal.token_role} for p in rows]
        rows = await store.user_projects(None if principal.is_superuser else principal.user_id)
        if principal.kind == "token":  # an API token acts with the lower of its role and its user's
            rows = [{**p, "role": roles.lowest(p["role"], principal.token_role)} for p in rows
                    if p["id"] == principal.token_project_id]
        return rows

    @post("/", opt={"permission": "superuser"}, summary="Create a project (you become its owner)", status_code=201)
    async def create_project(self, request: Request, data: NewProject) -> dict[str, Any]:
        return await request.app.state.membership.create_project(principal_of(request), data.slug, data.name)

    @delete("/{project:str}", opt={"permission": "project:owner"}, status_code=204,
            summary="Delete a project and everything in it (?confirm=<slug>)")
    async def delete_project(self, request: Request, project: str, confirm: str = "") -> None:
        await request.app.state.membership.delete_project(access_of(request), confirm)

    # ------------------------------------------------------------ members

    @get("/{project:str}/members", opt={"permission": "members:read"}, summary="Members and their roles")
    async def members(self, request: Request, project: str) -> list[dict[str, Any]]:
        return await request.app.state.store.list_members(access_of(request).project_id)

    @put("/{project:str}/members/{user_id:int}", opt={"permission": "config:write"},
         summary="Add a user or change their role")
    async def set_role(self, request: Request, project: str, user_id: int, data: RoleChange) -> dict[str, Any]:
        await request.app.state.membership.set_role(access_of(request), user_id, data.role)
        return {"user_id": user_id, "role": data.role}

    @delete("/{project:str}/members/{user_id:int}", opt={"permission": "config:write"}, status_code=204,
            summary="Remove a member")
    async def remove_member(self, request: Request, project: str, user_id: int) -> None:
        await request.app.state.membership.remove_member(access_of(request), user_id)

    # ------------------------------------------------------------ invitations

    @get("/{project:str}/invitations", opt={"permission": "config:write"}, summary="Invitations of the project")
    async def invitations(self, request: Request, project: str) -> list[dict[str, Any]]:
        return await request.app.state.store.list_invitations(access_of(request).project_id)

    @post("/{project:str}/invitations", opt={"permission": "config:write"}, status_code=201,
          summary="Invite someone (e-mailed when SMTP is set; the token is shown once)")
    async def invite(self, request: Request, project: str, data: NewInvitation) -> dict[str, Any]:
        return await request.app.state.membership.invite(access_of(request), data.email, data.role,
                                                         data.expires_hours)

    @delete("/{project:str}/invitations/{invitation_id:int}", opt={"permission": "config:write"}, status_code=204,
            summary="Revoke an open invitation")
    async def revoke_invitation(self, request: Request, project: str, invitation_id: int) -> None:
        await request.app.state.membership.revoke_invitation(access_of(request), invitation_id)

    # ------------------------------------------------------------ API tokens

    @get("/{project:str}/tokens", opt={"permission": "tasks:read"},
         summary="My API tokens for this project (admins: ?all=true for everyone's)")
    async def tokens(self, request: Request, project: str, all: bool = False) -> list[dict[str, Any]]:
        access = access_of(request)
        mine_only = not (all and access.has("admin"))
        user_id = access.principal.user_id if mine_only else None
        if mine_only and user_id is None:
            return []
        return await request.app.state.store.list_api_tokens(access.project_id, user_id)

    @post("/{project:str}/tokens", opt={"permission": "tasks:read"}, status_code=201,
          summary="Create an API token (role no higher than yours; shown once)")
    async def create_token(self, request: Request, project: str, data: NewToken) -> dict[str, Any]:
        return await request.app.state.identity.create_api_token(access_of(request), data.name, data.role,
                                                                 data.expires_days)

    @delete("/{project:str}/tokens/{token_id:int}", opt={"permission": "tasks:read"}, status_code=204,
            summary="Revoke an API token (yours; admins: anyone's)")
    async def revoke_token(self, request: Request, project: str, token_id: int) -> None:
        await request.app.state.identity.revoke_api_token(access_of(request), token_id)

    # ------------------------------------------------------------ agents

    @get("/{project:str}/agents", opt={"permission": "agents:read"}, summary="Agents of the project")
    async def agents(self, request: Request, project: str) -> list[Agent]:
        # Who is connected is read before the rows: an agent's hello is
        # stored before it counts as connected, so a row read afterwards
        # always carries what a connected agent said (engines, version).
        connected = request.app.state.registry.connected_ids()
        rows = await request.app.state.store.list_agents(access_of(request).project_id)
        return [msgspec.convert({**r, "connected": r["id"] in connected}, Agent) for r in rows]

    @post("/{project:str}/agents", opt={"permission": "config:write"}, status_code=201,
          summary="New agent: its token and HMAC secret are shown once")
    async def create_agent(self, request: Request, project: str, data: NewAgent) -> dict[str, Any]:
        return await request.app.state.membership.create_agent(access_of(request), data.name)

    @delete("/{project:str}/agents/{agent_id:int}", opt={"permission": "config:write"}, status_code=204,
            summary="Revoke an agent (its connections close)")
    async def revoke_agent(self, request: Request, project: str, agent_id: int) -> None:
        await request.app.state.membership.revoke_agent(access_of(request), agent_id)

    @post("/{project:str}/agents/{agent_id:int}/rotate", opt={"permission": "config:write"}, status_code=200,
          summary="New token and HMAC secret for an agent; the old ones stop working")
    async def rotate_agent(self, request: Request, project: str, agent_id: int) -> dict[str, Any]:
        return await request.app.state.membership.rotate_agent(access_of(request), agent_id)
