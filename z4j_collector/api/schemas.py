"""Request and response bodies of the REST API (msgspec structs)."""

from __future__ import annotations

from typing import Any

import msgspec


class TaskSummary(msgspec.Struct):
    engine: str
    task_id: str
    name: str | None
    state: str
    engine_state: str | None
    queue: str | None
    worker: str | None
    runtime: float | None
    retries: int | None
    exception: str | None
    parent_id: str | None
    root_id: str | None
    group_id: str | None
    created_at: float
    sent_at: float | None
    received_at: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float


class TaskPage(msgspec.Struct):
    tasks: list[TaskSummary]
    next_cursor: str | None
    """Pass as ``cursor`` to get the next (older) page; null on the last page."""


class TaskDetail(TaskSummary):
    args: Any
    kwargs: Any
    result: Any
    traceback: str | None
    eta: float | None
    chord_id: str | None
    redacted: bool
    replayable: bool
    """True when the agent sealed the original call, so a retry can use it."""
    events: list[dict[str, Any]] = []


class Worker(msgspec.Struct):
    engine: str
    name: str
    state: str
    first_seen_at: float
    last_seen_at: float
    info: dict[str, Any]


class Queue(msgspec.Struct):
    engine: str
    name: str
    depth: int
    updated_at: float


class Agent(msgspec.Struct):
    id: int
    name: str
    created_at: float
    revoked_at: float | None
    last_seen_at: float | None
    hostname: str | None
    version: str | None
    engines: list[str]
    dropped_events: int
    connected: bool


class CommandRequest(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    args: dict[str, Any] = {}
    agent_id: int | None = None
    engine: str | None = None
    wait: float = 0.0
    """Seconds to wait for the agent's result before answering (max 30)."""


class Command(msgspec.Struct):
    id: str
    agent_id: int | None
    action: str
    args: dict[str, Any]
    state: str
    requested_by: str | None
    created_at: float
    dispatched_at: float | None
    finished_at: float | None
    result: Any
    error: str | None


class Health(msgspec.Struct):
    status: str
    version: str
    database: str
    ingest: dict[str, int]
    cluster: dict[str, Any] | None = None
    """This collector in its cluster: {node, leader, peers} (peers: the other live collectors)."""
