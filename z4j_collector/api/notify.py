"""Notification channels (e-mail, Slack, Telegram, webhook), the "send test"
action and the delivery log (services/notify/).

Viewers read channels (secrets masked) and the log; operators send a test;
admins create, change and delete channels. Every change is audited."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, patch, post

from z4j_collector.api.params import object_body
from z4j_collector.errors import CollectorError
from z4j_collector.guards import access_of

CREATE_FIELDS = {"kind", "name", "config", "enabled"}
EDIT_FIELDS = {"name", "config", "enabled", "kind"}
STATUSES = ("pending", "sent", "failed", "refused")


class NotifyController(Controller):
    path = "/api/v1/projects/{project:str}/notifications"
    tags = ["notifications"]

    @get("/channels", opt={"permission": "tasks:read"}, summary="Notification channels (secrets masked)")
    async def list_channels(self, request: Request) -> list[dict[str, Any]]:
        return await request.app.state.notify.list(access_of(request).project_id)

    @post("/channels", opt={"permission": "config:write"}, summary="Create a notification channel", status_code=201)
    async def create(self, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.notify.create(access.project_id, object_body(data, CREATE_FIELDS), access.actor)

    @get("/channels/{channel_id:int}", opt={"permission": "tasks:read"}, summary="One channel (secrets masked)")
    async def show(self, request: Request, channel_id: int) -> dict[str, Any]:
        return await request.app.state.notify.one(access_of(request).project_id, channel_id)

    @patch("/channels/{channel_id:int}", opt={"permission": "config:write"},
           summary="Change a channel (config keys not given, and masked secrets sent back, stay as stored)")
    async def edit(self, request: Request, channel_id: int, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.notify.edit(access.project_id, channel_id, object_body(data, EDIT_FIELDS),
                                                   access.actor)

    @delete("/channels/{channel_id:int}", opt={"permission": "config:write"}, summary="Delete a channel",
            status_code=204)
    async def remove(self, request: Request, channel_id: int) -> None:
        access = access_of(request)
        await request.app.state.notify.delete(access.project_id, channel_id, access.actor)

    @post("/channels/{channel_id:int}/test", opt={"permission": "actions:write"},
          summary="Send a test message now; the delivery (sent, failed or refused, with the reason)", status_code=200)
    async def test(self, request: Request, channel_id: int) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.notify.test(access.project_id, access.project, channel_id, access.actor)

    @get("/deliveries", opt={"permission": "tasks:read"}, summary="The delivery log, newest first")
    async def deliveries(self, request: Request, channel_id: int | None = None, status: str | None = None,
                         before: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if not 1 <= limit <= 1000:
            raise CollectorError("limit must be between 1 and 1000", code="invalid_request")
        if status is not None and status not in STATUSES:
            raise CollectorError(f"status must be one of {', '.join(STATUSES)}", code="invalid_request")
        return await request.app.state.notify.deliveries(access_of(request).project_id, channel_id, status, before,
                                                         limit)
