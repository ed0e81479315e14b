"""Read API: workers, queues and agents of a project."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, get

from z4j_collector.api.schemas import Agent, Queue, Worker
from z4j_collector.guards import principal_of


class FleetController(Controller):
    path = "/api/v1/projects/{project:str}"
    tags = ["fleet"]

    @get("/workers", opt={"permission": "tasks:read"}, summary="Workers seen by agents")
    async def workers(self, request: Request) -> list[Worker]:
        rows = await request.app.state.store.list_workers(principal_of(request).project_id)
        return [msgspec.convert(r, Worker) for r in rows]

    @get("/queues", opt={"permission": "tasks:read"}, summary="Queue depths last reported")
    async def queues(self, request: Request) -> list[Queue]:
        rows = await request.app.state.store.list_queues(principal_of(request).project_id)
        return [msgspec.convert(r, Queue) for r in rows]

    @get("/agents", opt={"permission": "agents:read"}, summary="Agents of the project")
    async def agents(self, request: Request) -> list[Agent]:
        registry = request.app.state.registry
        rows = await request.app.state.store.list_agents(principal_of(request).project_id)
        return [msgspec.convert({**r, "connected": registry.get(r["id"]) is not None}, Agent) for r in rows]
