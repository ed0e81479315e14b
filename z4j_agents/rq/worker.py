"""``rq worker -w z4j_agents.rq.Worker``: RQ's forking worker with z4j inside.

Every override calls RQ's own method and adds one small, wrapped report; a
failure of z4j is logged and never reaches the job or the worker. The
overrides take ``*args, **kwargs`` after the arguments every supported RQ
version passes alike, so RQ 2.x (``perform_job(job, queue)``) and 3.x
(``perform_job(job, queue, execution)``, ``handle_job_success(..., execution)``)
both work: see docs/rq.md, "Versions".
"""

from __future__ import annotations

import logging
import os
from typing import Any

import rq

from z4j_agents.failure import exception_text
from z4j_agents.rq import agent as _agent
from z4j_agents.rq.capture import call, links, merged, status, task_event, ts

log = logging.getLogger("z4j.rq")


def _runtime(job: Any) -> float | None:
    start, end = ts(getattr(job, "started_at", None)), ts(getattr(job, "ended_at", None))
    return None if start is None or end is None else max(0.0, end - start)


class Z4JWorkerMixin:
    """The hooks; mixed into any ``rq.Worker`` subclass (see :class:`Worker`)."""

    _z4j_exc: tuple[str, str] | None = None

    # ------------------------------------------------------------ lifecycle (parent)

    def bootstrap(self, *args: Any, **kwargs: Any) -> Any:
        result = super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        _agent.bootstrap_worker(self)
        return result

    def teardown(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().teardown(*args, **kwargs)  # type: ignore[misc]
        finally:
            _agent.shutdown_worker(self)

    def execute_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            agent = _agent.state.agent
            if agent is not None and agent.worker is self:
                agent.processed += 1
                fields = merged(call(job), links(job), {"extra": _started_extra(job)})
                _agent.emit(task_event(job.id, "started", "started", queue=job.origin, worker=self.name,  # type: ignore[attr-defined]
                                       retries=_retries(job) or None, **fields))
                if agent.schedules is not None:
                    agent.schedules.seen(job)
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: could not report a started job")
        return super().execute_job(job, queue, *args, **kwargs)  # type: ignore[misc]

    # ------------------------------------------------------------ the job (horse; failure also parent)

    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().perform_job(job, queue, *args, **kwargs)  # type: ignore[misc]
        finally:
            _agent.flush_horse()  # RQ ends the horse with os._exit: nothing runs after this

    def handle_exception(self, job: Any, *exc_info: Any) -> Any:
        try:
            self._z4j_exc = (job.id, exception_text(exc_info[1]))
        except Exception:  # noqa: BLE001
            pass
        return super().handle_exception(job, *exc_info)  # type: ignore[misc]

    def handle_job_success(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().handle_job_success(job, queue, *args, **kwargs)  # type: ignore[misc]
        try:
            if _agent.state.agent is not None:
                _agent.emit(task_event(job.id, "succeeded", status(job) or "finished", name=job.func_name,
                                       queue=job.origin, worker=self.name, result=getattr(job, "_result", None),  # type: ignore[attr-defined]
                                       runtime=_runtime(job)))
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: could not report a finished job")
        return result

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        event = None
        try:
            if _agent.state.agent is not None:
                event = self._z4j_failure(job, args, kwargs)
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: could not report a failed job")
        result = super().handle_job_failure(job, queue, *args, **kwargs)  # type: ignore[misc]
        if event is not None:
            try:
                if event.kind == "retried":
                    event.engine_state = status(job) or "queued"
                _agent.emit(event)
            except Exception:  # noqa: BLE001
                log.exception("z4j rq: could not report a failed job")
        return result

    def _z4j_failure(self, job: Any, args: tuple, kwargs: dict) -> Any:
        exc_string = kwargs.get("exc_string")
        if exc_string is None and len(args) >= 2 and isinstance(args[1], str):
            exc_string = args[1]  # handle_job_failure(job, queue, started_job_registry, exc_string)
        exc_string = exc_string or ""
        stashed, self._z4j_exc = self._z4j_exc, None
        exception = stashed[1] if stashed and stashed[0] == job.id else None
        if exception is None:
            lines = [line for line in exc_string.strip().splitlines() if line.strip()]
            exception = lines[-1].strip().rstrip(";").strip() if lines else None
        traceback = exc_string if exc_string.lstrip().startswith("Traceback") else None
        common = {"name": job.func_name, "queue": job.origin, "worker": self.name, "runtime": _runtime(job)}  # type: ignore[attr-defined]
        in_parent = not getattr(self, "_is_horse", False)
        if getattr(self, "_stopped_job_id", None) == job.id:
            return task_event(job.id, "revoked", "stopped", exception=exception, extra={"terminated": True},
                              **common)
        if job.should_retry:
            # RQ counts retries only for a returned Retry; for an exception with
            # Retry(max=N) z4j keeps the count in the job's meta (saved with the requeue).
            retries = _retries(job) + 1
            if isinstance(getattr(job, "meta", None), dict):
                job.meta[RETRIES_META] = retries
            return task_event(job.id, "retried", "queued", exception=exception, traceback=traceback,
                              retries=retries, extra={"retries_left": max(0, (job.retries_left or 1) - 1)},
                              **common)
        extra = {"horse_killed": True} if in_parent and "terminated unexpectedly" in exc_string.lower() else None
        return task_event(job.id, "failed", "failed", exception=exception, traceback=traceback, extra=extra,
                          **common)

    def handle_job_retry(self, job: Any, queue: Any, retry: Any, *args: Any, **kwargs: Any) -> Any:
        """A job that returned ``rq.Retry`` (RQ 2.x and 3.x)."""
        retries_before = getattr(job, "number_of_retries", None) or 0
        result = super().handle_job_retry(job, queue, retry, *args, **kwargs)  # type: ignore[misc]
        try:
            if _agent.state.agent is not None:
                common = {"name": job.func_name, "queue": job.origin, "worker": self.name,  # type: ignore[attr-defined]
                          "runtime": _runtime(job)}
                engine_state = status(job)
                if engine_state == "failed":
                    _agent.emit(task_event(job.id, "failed", "failed", retries=retries_before,
                                           exception=f"Retry: at most {retry.max} retries, all used", **common))
                else:
                    _agent.emit(task_event(job.id, "retried", engine_state or "queued", retries=retries_before + 1,
                                           exception="Retry: the job asked to run again", **common))
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: could not report a retry")
        return result


RETRIES_META = "z4j_retries"


def _retries(job: Any) -> int:
    meta = getattr(job, "meta", None)
    counted = meta.get(RETRIES_META) if isinstance(meta, dict) else None
    return max(int(counted or 0), int(getattr(job, "number_of_retries", None) or 0))


def _started_extra(job: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"worker_pid": os.getpid()}
    enqueued = ts(getattr(job, "enqueued_at", None))
    if enqueued is not None:
        extra["enqueued_at"] = enqueued
    return extra


class Worker(Z4JWorkerMixin, rq.Worker):
    """RQ's default forking worker (a work horse per job), reporting to z4j."""


class SimpleWorker(Z4JWorkerMixin, rq.SimpleWorker):
    """RQ's SimpleWorker (the job runs in the worker process, no horse), reporting to z4j."""
