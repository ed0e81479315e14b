"""Trends (rollups per minute/hour/day) and the project's retention settings.

Viewers read trends and retention; admins change retention (audited in the
same transaction)."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, get, put

from z4j_collector.api.params import parse_time
from z4j_collector.errors import CollectorError
from z4j_collector.guards import access_of
from z4j_collector.services.trends import BUCKETS

GROUP_BY = ("name", "queue", "engine")
DEFAULT_SPAN = {"minute": 3600.0, "hour": 86400.0, "day": 30 * 86400.0}
MAX_BUCKETS = 5000
RETENTION_FIELDS = ("events_days", "tasks_days", "rollups_days")
MAX_RETENTION_DAYS = 36500


class TrendsController(Controller):
    path = "/api/v1/projects/{project:str}"
    tags = ["trends"]

    @get("/trends", opt={"permission": "tasks:read"},
         summary="Counts by state, failure rate, p50/p95/p99 runtime and queue wait per group and bucket")
    async def trends(self, request: Request, group_by: str = "name", bucket: str = "hour",
                     since: str | None = None, until: str | None = None, name: str | None = None,
                     queue: str | None = None, engine: str | None = None) -> dict[str, Any]:
        if group_by not in GROUP_BY:
            raise CollectorError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}",
                                 code="invalid_request")
        if bucket not in BUCKETS:
            raise CollectorError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}", code="invalid_request")
        end = parse_time(until, "until")
        end = time.time() if end is None else end
        start = parse_time(since, "since")
        start = end - DEFAULT_SPAN[bucket] if start is None else start
        if start >= end:
            raise CollectorError("since must be before until", code="invalid_request")
        if (end - start) / BUCKETS[bucket] > MAX_BUCKETS:
            raise CollectorError(f"at most {MAX_BUCKETS} {bucket} buckets per request: narrow since/until or use a "
                                 f"larger bucket", code="invalid_request")
        return await request.app.state.trends.read(access_of(request).project_id, bucket, group_by, start, end,
                                                   engine, name, queue)

    @get("/retention", opt={"permission": "tasks:read"}, summary="How long events, tasks and rollups are kept")
    async def retention(self, request: Request) -> dict[str, Any]:
        return await request.app.state.store.get_retention(access_of(request).project_id)

    @put("/retention", opt={"permission": "config:write"},
         summary="Change retention (days; null: back to the default)", status_code=200)
    async def set_retention(self, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        access = access_of(request)
        values = _retention_body(data)
        state = request.app.state
        store, audit = state.store, state.audit
        before = await store.get_retention(access.project_id)

        async def tx_fn(tx: Any) -> None:
            await store.set_retention(tx, access.project_id, values)
            await audit.record(tx, access.actor.entry(access.project_id, "retention.set", "retention",
                                                      before={k: before.get(k) for k in values}, after=values))

        await store.write(tx_fn)
        return await store.get_retention(access.project_id)


def _retention_body(data: Any) -> dict[str, int | None]:
    if not isinstance(data, dict) or not data:
        raise CollectorError(f"the body must be a JSON object with one or more of {', '.join(RETENTION_FIELDS)}",
                             code="invalid_request")
    unknown = set(data) - set(RETENTION_FIELDS)
    if unknown:
        raise CollectorError(f"unknown field(s) {', '.join(sorted(unknown))}: use {', '.join(RETENTION_FIELDS)}",
                             code="invalid_request")
    out: dict[str, int | None] = {}
    for key in RETENTION_FIELDS:
        if key not in data:
            continue
        value = data[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= MAX_RETENTION_DAYS):
            raise CollectorError(f"{key} must be a whole number of days from 1 to {MAX_RETENTION_DAYS} "
                                 f"(or null for the default), got {value!r}", code="invalid_request")
        out[key] = value
    return out
