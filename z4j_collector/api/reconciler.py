"""The reconciler of one project (services/reconciler.py): its settings and
how many tasks are stuck now (viewers), a pass on demand (operators), the
settings changed (admins, audited)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post, put

from z4j_collector.guards import access_of


class ReconcilerController(Controller):
    path = "/api/v1/projects/{project:str}/reconciler"
    tags = ["reconciler"]

    @get("/", opt={"permission": "tasks:read"}, summary="Reconciler settings (effective, own, defaults) and stuck count")
    async def show(self, request: Request) -> dict[str, Any]:
        return await request.app.state.reconciler.settings(access_of(request).project_id)

    @put("/", opt={"permission": "config:write"}, summary="Change the project's reconciler settings (null: default)")
    async def change(self, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        return await request.app.state.reconciler.set_settings(access.project_id, data, access.actor)

    @post("/run", opt={"permission": "actions:write"}, summary="Run one reconciler pass on this project now",
          status_code=200)
    async def run(self, request: Request) -> dict[str, Any]:
        access = access_of(request)
        stats = await request.app.state.reconciler.run_pass(access.project_id)
        await request.app.state.audit.write(access.actor.entry(
            access.project_id, "reconciler.run", "project", **{k: v for k, v in stats.as_dict().items()
                                                                if k != "errors"}))
        return stats.as_dict()
