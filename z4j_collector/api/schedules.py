"""Periodic schedules (Celery Beat): list, fire history, and changes that
reach the scheduler's own store through its agent (services/schedules.py).

Viewers read; operators enable, disable and trigger; admins create, edit and
delete. Every change is audited with the row it writes."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, patch, post

from z4j_collector.api.params import object_body, parse_time
from z4j_collector.errors import CollectorError
from z4j_collector.guards import access_of

CREATE_FIELDS = {"name", "task", "schedule", "args", "kwargs", "queue", "options", "enabled", "engine", "agent_id"}
EDIT_FIELDS = {"task", "schedule", "args", "kwargs", "queue", "options", "enabled"}


class ScheduleController(Controller):
    path = "/api/v1/projects/{project:str}/schedules"
    tags = ["schedules"]

    @get("/", opt={"permission": "tasks:read"}, summary="Schedules with their next and last run")
    async def list_schedules(self, request: Request, engine: str | None = None, source: str | None = None,
                             enabled: bool | None = None) -> list[dict[str, Any]]:
        return await request.app.state.schedules.list(access_of(request).project_id, engine, source, enabled)

    @post("/", opt={"permission": "config:write"}, summary="Create a schedule in the scheduler's store",
          status_code=201)
    async def create(self, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.schedules.create(access.project_id, object_body(data, CREATE_FIELDS), access.actor)

    @get("/{schedule_id:int}", opt={"permission": "tasks:read"}, summary="One schedule")
    async def show(self, request: Request, schedule_id: int) -> dict[str, Any]:
        return await request.app.state.schedules.one(access_of(request).project_id, schedule_id)

    @patch("/{schedule_id:int}", opt={"permission": "config:write"}, summary="Change a schedule")
    async def edit(self, request: Request, schedule_id: int, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.schedules.edit(access.project_id, schedule_id, object_body(data, EDIT_FIELDS),
                                                      access.actor)

    @delete("/{schedule_id:int}", opt={"permission": "config:write"}, summary="Delete a schedule", status_code=204)
    async def remove(self, request: Request, schedule_id: int) -> None:
        access = access_of(request)
        await request.app.state.schedules.delete(access.project_id, schedule_id, access.actor)

    @post("/{schedule_id:int}/enable", opt={"permission": "actions:write"}, summary="Enable a schedule",
          status_code=200)
    async def enable(self, request: Request, schedule_id: int) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.schedules.set_enabled(access.project_id, schedule_id, True, access.actor)

    @post("/{schedule_id:int}/disable", opt={"permission": "actions:write"}, summary="Disable a schedule",
          status_code=200)
    async def disable(self, request: Request, schedule_id: int) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.schedules.set_enabled(access.project_id, schedule_id, False, access.actor)

    @post("/{schedule_id:int}/trigger", opt={"permission": "actions:write"},
          summary="Send the schedule's task now (the schedule does not move)", status_code=202)
    async def trigger(self, request: Request, schedule_id: int) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.schedules.trigger(access.project_id, schedule_id, access.actor)

    @get("/{schedule_id:int}/fires", opt={"permission": "tasks:read"}, summary="When the schedule fired, newest first")
    async def fires(self, request: Request, schedule_id: int, limit: int = 100,
                    before: str | None = None) -> list[dict[str, Any]]:
        if not 1 <= limit <= 1000:
            raise CollectorError("limit must be between 1 and 1000", code="invalid_request")
        return await request.app.state.schedules.fires(access_of(request).project_id, schedule_id, limit,
                                                       parse_time(before, "before"))
