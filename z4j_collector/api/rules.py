"""Notification rules (services/rules.py): viewers list them, admins create,
change and delete them; every change is audited."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, patch, post

from z4j_collector.api.params import object_body
from z4j_collector.guards import access_of

CREATE_FIELDS = {"kind", "name", "params", "channel_ids", "cooldown_s", "enabled"}


class RulesController(Controller):
    path = "/api/v1/projects/{project:str}/notifications/rules"
    tags = ["notifications"]

    @get("/", opt={"permission": "tasks:read"}, summary="Notification rules")
    async def list_rules(self, request: Request) -> list[dict[str, Any]]:
        return await request.app.state.rules.list(access_of(request).project_id)

    @post("/", opt={"permission": "config:write"}, summary="Create a notification rule", status_code=201)
    async def create(self, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.rules.create(access.project_id, object_body(data, CREATE_FIELDS), access.actor)

    @get("/{rule_id:int}", opt={"permission": "tasks:read"}, summary="One notification rule")
    async def show(self, request: Request, rule_id: int) -> dict[str, Any]:
        return await request.app.state.rules.one(access_of(request).project_id, rule_id)

    @patch("/{rule_id:int}", opt={"permission": "config:write"},
           summary="Change a rule (fields not given stay; params, when given, replace the stored ones)")
    async def edit(self, request: Request, rule_id: int, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.rules.edit(access.project_id, rule_id, object_body(data, CREATE_FIELDS),
                                                  access.actor)

    @delete("/{rule_id:int}", opt={"permission": "config:write"}, summary="Delete a rule", status_code=204)
    async def remove(self, request: Request, rule_id: int) -> None:
        access = access_of(request)
        await request.app.state.rules.delete(access.project_id, rule_id, access.actor)
