"""Read API: tasks, with every filter of PRODUCT.md §3, keyset paging, export."""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import Parameter

from z4j_collector.api.params import decode_cursor, encode_cursor, parse_search, parse_states, parse_time
from z4j_collector.api.schemas import TaskDetail, TaskPage, TaskSummary
from z4j_collector.errors import CollectorError, NotFound
from z4j_collector.guards import access_of
from z4j_collector.services.tree import task_tree
from z4j_collector.store.base import TASK_SUMMARY_COLUMNS, TaskQuery

MAX_LIMIT = 1000


class TaskController(Controller):
    path = "/api/v1/projects/{project:str}/tasks"
    opt = {"permission": "tasks:read"}
    tags = ["tasks"]

    @get("/", summary="List tasks, newest first")
    async def list_tasks(
        self,
        request: Request,
        states: str | None = Parameter(query="state", default=None, description="Comma-separated states to include"),
        not_state: str | None = Parameter(default=None, description="Comma-separated states to exclude"),
        name: str | None = Parameter(default=None, description="Task name; a trailing * matches a prefix"),
        queue: str | None = None,
        worker: str | None = None,
        engine: str | None = None,
        since: str | None = Parameter(default=None, description="Epoch, ISO 8601, or an age like 2h"),
        until: str | None = None,
        search: str | None = Parameter(default=None, description="Free text in id, name, args, kwargs, result, exception"),
        parent_id: str | None = None,
        root_id: str | None = None,
        limit: int = Parameter(default=50, ge=1, le=MAX_LIMIT),
        cursor: str | None = None,
        format: str = Parameter(default="json", description="json or csv"),
    ) -> Response:
        if format not in ("json", "csv"):
            raise CollectorError(f"format must be json or csv, got {format!r}", code="bad_format")
        query = TaskQuery(
            states=parse_states(states, "state"),
            not_states=parse_states(not_state, "not_state"),
            name=name, queue=queue, worker=worker, engine=engine,
            since=parse_time(since, "since"), until=parse_time(until, "until"),
            search=parse_search(search), parent_id=parent_id, root_id=root_id,
        )
        principal = access_of(request)
        store = request.app.state.store
        rows = await store.list_tasks(principal.project_id, query, limit + 1, decode_cursor(cursor))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]) if more else None
        if format == "csv":
            # CSV has no envelope: the next page's cursor travels in a header.
            headers = {"X-Next-Cursor": next_cursor} if next_cursor else {}
            return Response(_csv(rows), media_type="text/csv", headers=headers)
        page = TaskPage(tasks=[msgspec.convert(r, TaskSummary) for r in rows], next_cursor=next_cursor)
        return Response(page)

    @get("/counts", summary="Number of tasks per state")
    async def counts(self, request: Request) -> dict[str, int]:
        return await request.app.state.store.count_tasks_by_state(access_of(request).project_id)

    @get("/{task_id:str}", summary="One task with its event timeline")
    async def show(self, request: Request, task_id: str, engine: str | None = None) -> TaskDetail:
        task = await request.app.state.store.get_task(access_of(request).project_id, task_id, engine, events=True)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        return msgspec.convert(task, TaskDetail)

    @get("/{task_id:str}/tree", summary="The workflow around a task: chains, groups and chords as a tree")
    async def tree(self, request: Request, task_id: str, engine: str | None = None) -> dict[str, Any]:
        tree = await task_tree(request.app.state.store, access_of(request).project_id, task_id, engine)
        if tree is None:
            raise NotFound(f"no task {task_id!r}")
        return tree


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TASK_SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
