"""Read API: workers and queues of a project (agents: api/admin.py)."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, get

from z4j_collector.api.schemas import Queue, Worker
from z4j_collector.guards import access_of


class FleetController(Controller):
    path = "/api/v1/projects/{project:str}"
    tags = ["fleet"]

    @get("/workers", opt={"permission": "tasks:read"}, summary="Workers seen by agents")
    async def workers(self, request: Request) -> list[Worker]:
        rows = await request.app.state.store.list_workers(access_of(request).project_id)
        return [msgspec.convert(r, Worker) for r in rows]

    @get("/queues", opt={"permission": "tasks:read"}, summary="Queue depths last reported")
    async def queues(self, request: Request) -> list[Queue]:
        rows = await request.app.state.store.list_queues(access_of(request).project_id)
        return [msgspec.convert(r, Queue) for r in rows]
