"""RQ jobs as z4j task events, and the producer side (enqueue capture).

Where each state comes from (``rq worker -w z4j_agents.rq.Worker``):

=========  ================================================  ==============
kind       hook                                              process
=========  ================================================  ==============
sent       :class:`Queue` ``enqueue_job`` / ``schedule_job``  producer/horse
started    ``Worker.execute_job`` (before the fork)           worker
succeeded  ``handle_job_success`` (runtime, result)           horse
failed     ``handle_job_failure`` (full traceback)            horse / worker
retried    ``handle_job_failure`` with retries left (rq         horse
           ``Retry``), ``handle_job_retry`` (a returned Retry)
revoked    a job stopped by ``send_stop_job_command``          worker
           (engine_state ``stopped``), ``rq.cancel``           (agent)
           (``canceled``)
=========  ================================================  ==============

DAG edges (``depends_on``): ``parent_id`` is the job's first dependency,
``root_id`` the first job of the chain (recorded in ``job.meta["z4j_root_id"]``
by :class:`Queue` at enqueue, so the worker and later jobs know it; a job with
no dependency is its own root), and ``extra.depends_on`` lists every
dependency when there are several.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import rq

from z4j_agents import protocol as p
from z4j_agents.failure import exception_text
from z4j_agents.rq.agent import ENGINE, emit, producer_agent, state

log = logging.getLogger("z4j.rq")

ROOT_META = "z4j_root_id"
RETRY_OF_META = "z4j_retry_of"


def ts(value: Any) -> float | None:
    """Epoch seconds of an RQ datetime (naive ones are UTC)."""
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def status(job: Any) -> str | None:
    try:
        value = job.get_status(refresh=False)
    except Exception:  # noqa: BLE001
        return None
    return None if value is None else str(getattr(value, "value", value))


def dependencies(job: Any) -> list[str]:
    ids = getattr(job, "_dependency_ids", None) or []
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def links(job: Any) -> dict[str, Any]:
    """parent_id/root_id (and extra.depends_on) of a job, from what it carries."""
    deps = dependencies(job)
    meta = getattr(job, "meta", None) or {}
    root = meta.get(ROOT_META) if isinstance(meta, dict) else None
    out: dict[str, Any] = {"root_id": str(root) if root else (job.id if not deps else None)}
    if deps:
        out["parent_id"] = deps[0]
        if out["root_id"] is None:
            out["root_id"] = deps[0]
    extra: dict[str, Any] = {}
    if len(deps) > 1:
        extra["depends_on"] = deps
    retry_of = meta.get(RETRY_OF_META) if isinstance(meta, dict) else None
    if retry_of:
        extra["retry_of"] = str(retry_of)
    if extra:
        out["extra"] = extra
    return out


def call(job: Any) -> dict[str, Any]:
    """name, args and kwargs (display copies: redacted by the agent thread)."""
    out: dict[str, Any] = {}
    try:
        out["name"] = job.func_name
        out["args"] = list(job.args)
        out["kwargs"] = dict(job.kwargs)
    except Exception as exc:  # noqa: BLE001 - an unreadable payload is RQ's to report
        out["extra"] = {"payload": f"unreadable: {exception_text(exc)}"[:300]}
    return out


def task_event(task_id: str, kind: str, engine_state: str | None, **fields: Any) -> p.TaskEvent:
    event = p.TaskEvent(id=p.new_id(), task_id=str(task_id), engine=ENGINE, kind=kind, ts=time.time(),
                        engine_state=engine_state)
    extra = fields.pop("extra", None)
    for key, value in fields.items():
        if value is not None:
            setattr(event, key, value)
    if extra:
        event.extra = {**(event.extra or {}), **extra}
    return event


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Field dicts merged, their ``extra`` dicts too."""
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "extra":
                extra.update(value or {})
            else:
                out[key] = value
    if extra:
        out["extra"] = extra
    return out


def sent_event(job: Any, queue: str | None, eta: float | None = None) -> p.TaskEvent:
    fields = merged(call(job), links(job))
    return task_event(job.id, "sent", status(job) or "queued", queue=queue or job.origin, eta=eta,
                      retries=getattr(job, "number_of_retries", None), **fields)


# ------------------------------------------------------------------ producer side


def _root_for(job: Any, connection: Any) -> None:
    """Record the chain's root in the job's meta before RQ saves it."""
    deps = dependencies(job)
    if not deps or not isinstance(getattr(job, "meta", None), dict) or ROOT_META in job.meta:
        return
    try:
        raw = connection.hget(f"{job.redis_job_namespace_prefix}{deps[0]}", "meta")
        root = None
        if raw:
            meta = job.serializer.loads(raw)
            root = meta.get(ROOT_META) if isinstance(meta, dict) else None
        job.meta[ROOT_META] = root or deps[0]
    except Exception:  # noqa: BLE001 - without it the edge to the parent still stands
        log.debug("z4j rq: no root for %s", job.id, exc_info=True)


def _capture(queue: Any) -> bool:
    return state.relay_client is not None or producer_agent(queue.connection) is not None


class Queue(rq.Queue):
    """``rq.Queue`` that reports every job it enqueues or schedules (``sent``)
    with its arguments (redacted for display) and ``depends_on`` edges. The
    job itself is exactly what ``rq.Queue`` makes: nothing is added to the
    call; ``meta`` gains ``z4j_root_id`` for dependent jobs."""

    def enqueue_job(self, job: Any, *args: Any, **kwargs: Any) -> Any:
        active = False
        try:
            active = _capture(self)
            if active:
                _root_for(job, self.connection)
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: enqueue capture failed")
        job = super().enqueue_job(job, *args, **kwargs)
        if active:
            try:
                emit(sent_event(job, self.name))
            except Exception:  # noqa: BLE001
                log.exception("z4j rq: enqueue capture failed")
        return job

    def schedule_job(self, job: Any, scheduled_at: Any, *args: Any, **kwargs: Any) -> Any:
        active = False
        try:
            active = _capture(self)
            if active:
                _root_for(job, self.connection)
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: enqueue capture failed")
        job = super().schedule_job(job, scheduled_at, *args, **kwargs)
        if active:
            try:
                emit(sent_event(job, self.name, eta=ts(scheduled_at)))
            except Exception:  # noqa: BLE001
                log.exception("z4j rq: enqueue capture failed")
        return job
