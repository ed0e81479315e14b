"""Actions: retry, cancel, bulk retry, purge, dead-letter requeue, worker controls (operator).

Typed routes over the commands service (services/actions.py): each checks
its input, picks the agent that can act, sends one command, and answers the
command (200 when the agent answered within ``wait`` seconds, else 202; read
it later with ``GET …/commands/{id}``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, post

from z4j_collector.api.params import check_wait, parse_search, parse_states, parse_time
from z4j_collector.api.schemas import Command
from z4j_collector.guards import access_of
from z4j_collector.services.actions import BULK_DEFAULT
from z4j_collector.store.base import TaskQuery

WRITE = {"permission": "actions:write"}


class RetryRequest(msgspec.Struct, forbid_unknown_fields=True):
    engine: str | None = None
    wait: float = 10.0
    """Seconds to wait for the agent's answer (0 to 30)."""


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    terminate: bool = False
    """Kill the process running the task (SIGTERM); needs ``confirm``."""
    confirm: bool = False
    engine: str | None = None
    wait: float = 10.0


class BulkRetryRequest(msgspec.Struct, forbid_unknown_fields=True):
    state: str | None = None
    """Comma-separated states; default failure."""
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    engine: str | None = None
    since: str | None = None
    until: str | None = None
    search: str | None = None
    limit: int = BULK_DEFAULT
    """At most this many matching tasks (1 to 10,000); the job says when more matched."""
    resume: str | None = None
    """A bulk retry job id: run its filter again, skipping the tasks it already retried."""
    dry_run: bool = False
    wait: float = 0.0


class PurgeRequest(msgspec.Struct, forbid_unknown_fields=True):
    confirm: bool = False
    name: str | None = None
    """Only messages of this task name."""
    older_than: str | float | None = None
    """Only messages published longer ago than this: seconds or an age (90s, 15m, 1h, 2d)."""
    dead_letters: bool = False
    """Also delete the queue's dead letters (Dramatiq's XQ, RQ's failed registry)."""
    engine: str | None = None
    wait: float = 10.0


class RequeueDeadRequest(msgspec.Struct, forbid_unknown_fields=True):
    task_ids: list[str] | None = None
    """The dead letters to put back on the queue."""
    all: bool = False
    """Every dead letter of the queue; needs ``confirm``."""
    confirm: bool = False
    engine: str | None = None
    wait: float = 10.0


class WorkerControlRequest(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    n: int | None = None
    max: int | None = None
    min: int | None = None
    queue: str | None = None
    task_name: str | None = None
    rate: str | None = None
    soft: float | None = None
    hard: float | None = None
    reload: bool | None = None
    confirm: bool = False
    engine: str | None = None
    wait: float = 10.0


def _answer(command: dict[str, Any]) -> Response:
    status = 202 if command["state"] in ("pending", "dispatched") else 200
    return Response(msgspec.convert(command, Command), status_code=status)


class ActionController(Controller):
    path = "/api/v1/projects/{project:str}"
    tags = ["actions"]

    @post("/tasks/{task_id:str}/retry", opt=WRITE, summary="Retry a task with its exact original call")
    async def retry(self, request: Request, task_id: str, data: RetryRequest | None = None) -> Response:
        data = data or RetryRequest()
        access = access_of(request)
        command = await request.app.state.actions.retry(
            access.project_id, task_id, actor=access.actor, engine=data.engine, wait_s=check_wait(data.wait))
        return _answer(command)

    @post("/tasks/{task_id:str}/cancel", opt=WRITE, summary="Revoke a queued task, or terminate a running one")
    async def cancel(self, request: Request, task_id: str, data: CancelRequest | None = None) -> Response:
        data = data or CancelRequest()
        access = access_of(request)
        command = await request.app.state.actions.cancel(
            access.project_id, task_id, actor=access.actor, terminate=data.terminate, confirm=data.confirm,
            engine=data.engine, wait_s=check_wait(data.wait))
        return _answer(command)

    @post("/tasks/bulk-retry", opt=WRITE, summary="Retry every task matching a filter (a capped, resumable job)")
    async def bulk_retry(self, request: Request, data: BulkRetryRequest) -> Response:
        access = access_of(request)
        query = TaskQuery(
            states=parse_states(data.state, "state"), name=data.name, queue=data.queue, worker=data.worker,
            engine=data.engine, since=parse_time(data.since, "since"), until=parse_time(data.until, "until"),
            search=parse_search(data.search),
        )
        result = await request.app.state.actions.bulk_retry(
            access.project_id, query, data.limit, actor=access.actor, resume=data.resume, dry_run=data.dry_run,
            wait_s=check_wait(data.wait))
        if data.dry_run:
            return Response(result, status_code=200)
        return _answer(result)

    @post("/queues/{queue:str}/purge", opt=WRITE, summary="Delete a queue's messages, or those matching a filter")
    async def purge(self, request: Request, queue: str, data: PurgeRequest | None = None) -> Response:
        data = data or PurgeRequest()
        access = access_of(request)
        command = await request.app.state.actions.purge(
            access.project_id, queue, actor=access.actor, confirm=data.confirm, name=data.name,
            older_than=data.older_than, engine=data.engine, dead_letters=data.dead_letters,
            wait_s=check_wait(data.wait))
        return _answer(command)

    @post("/queues/{queue:str}/requeue-dead", opt=WRITE, summary="Put dead letters back on their queue")
    async def requeue_dead(self, request: Request, queue: str, data: RequeueDeadRequest) -> Response:
        access = access_of(request)
        command = await request.app.state.actions.requeue_dead(
            access.project_id, queue, actor=access.actor, task_ids=data.task_ids, every=data.all,
            confirm=data.confirm, engine=data.engine, wait_s=check_wait(data.wait))
        return _answer(command)

    @post("/workers/{worker:str}/control", opt=WRITE, summary="Pool, consumer, limit and shutdown controls")
    async def control(self, request: Request, worker: str, data: WorkerControlRequest) -> Response:
        access = access_of(request)
        params = {k: getattr(data, k) for k in ("n", "max", "min", "queue", "task_name", "rate", "soft", "hard",
                                                  "reload")}
        command = await request.app.state.actions.worker_control(
            access.project_id, worker, data.op, params, actor=access.actor, confirm=data.confirm, engine=data.engine,
            wait_s=check_wait(data.wait))
        return _answer(command)
