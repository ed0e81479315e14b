"""The audit log: list, verify the chain, signed checkpoints (and their export).

Project chains need the Operator role (PRODUCT.md §5); the instance chain
(users, projects, logins) is for superusers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from litestar import Controller, Request, get, post

from z4j_collector.api.params import parse_time
from z4j_collector.errors import CollectorError
from z4j_collector.guards import access_of
from z4j_collector.services.audit import INSTANCE

MAX_LIMIT = 1000


async def _list(request: Request, project_id: int, action: str | None, actor: str | None, outcome: str | None,
                since: str | None, until: str | None, before: int | None, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise CollectorError(f"limit must be between 1 and {MAX_LIMIT}", code="bad_limit")
    rows = await request.app.state.store.audit_list(
        project_id, action=action, actor=actor, outcome=outcome, since=parse_time(since, "since"),
        until=parse_time(until, "until"), before_seq=before, limit=limit)
    for row in rows:
        row["detail"] = msgspec.json.decode(row["detail"])
    return {"entries": rows, "next_before": rows[-1]["seq"] if len(rows) == limit else None}


async def _checkpoints(request: Request, project_id: int, slug: str) -> dict[str, Any]:
    audit = request.app.state.audit
    return audit.export(await request.app.state.store.checkpoints(project_id), {project_id: slug})


class AuditController(Controller):
    tags = ["audit"]

    @get("/api/v1/projects/{project:str}/audit", opt={"permission": "audit:read"},
         summary="The project's audit log, newest first (filters: action (prefix with *), actor, outcome, since, until)")
    async def project_log(self, request: Request, project: str, action: str | None = None, actor: str | None = None,
                          outcome: str | None = None, since: str | None = None, until: str | None = None,
                          before: int | None = None, limit: int = 100) -> dict[str, Any]:
        return await _list(request, access_of(request).project_id, action, actor, outcome, since, until, before, limit)

    @get("/api/v1/projects/{project:str}/audit/verify", opt={"permission": "audit:read"},
         summary="Walk the project's chain and its signed checkpoints")
    async def project_verify(self, request: Request, project: str) -> dict[str, Any]:
        report = await request.app.state.audit.verify(access_of(request).project_id)
        return report.to_dict()

    @get("/api/v1/projects/{project:str}/audit/checkpoints", opt={"permission": "audit:read"},
         summary="The project's signed checkpoints, as an export file")
    async def project_checkpoints(self, request: Request, project: str) -> dict[str, Any]:
        access = access_of(request)
        return await _checkpoints(request, access.project_id, access.project)

    @post("/api/v1/projects/{project:str}/audit/checkpoints", opt={"permission": "audit:read"}, status_code=201,
          summary="Sign a checkpoint of the chain now; returns it as an export file")
    async def project_checkpoint_now(self, request: Request, project: str) -> dict[str, Any]:
        access = access_of(request)
        cp = await request.app.state.audit.checkpoint(access.project_id)
        if cp is None:
            raise CollectorError("the project's audit log is empty: nothing to sign", code="empty_log")
        return request.app.state.audit.export([cp], {access.project_id: access.project})

    @get("/api/v1/audit", opt={"permission": "superuser"},
         summary="The instance's audit log (users, projects, logins), newest first")
    async def instance_log(self, request: Request, action: str | None = None, actor: str | None = None,
                           outcome: str | None = None, since: str | None = None, until: str | None = None,
                           before: int | None = None, limit: int = 100) -> dict[str, Any]:
        return await _list(request, INSTANCE, action, actor, outcome, since, until, before, limit)

    @get("/api/v1/audit/verify", opt={"permission": "superuser"}, summary="Walk the instance chain")
    async def instance_verify(self, request: Request) -> dict[str, Any]:
        return (await request.app.state.audit.verify(INSTANCE)).to_dict()
