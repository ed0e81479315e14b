"""What happens to arq jobs, as z4j task events.

Everything here runs on the worker's (or producer's) event loop, so it does
as little as it can: it notes what happened (a tuple on a deque, plus arq's
own encoding of the call for the sealed copy) and returns. The agent's own
thread (agent.py) turns the notes into events, seals the calls and sends
them. Every hook is wrapped: nothing here can fail, block or change a job.

=========  =============================================  ============
kind       where                                          engine_state
=========  =============================================  ============
sent       ``ArqRedis.enqueue_job`` (producers, and jobs   queued /
           or cron enqueued from the worker)              deferred
started    the job's coroutine, wrapped by the agent      in_progress
succeeded  it returned (result, runtime)                  complete
failed     it raised (exception, full traceback), or it   complete
           timed out; or arq failed it before it ran:
           expired, unknown function, unreadable job,
           max tries exceeded (``finish_failed_job``)
retried    ``Retry`` (or cancelled by a shutdown): arq     queued /
           runs it again with ``job_try + 1``             deferred
revoked    aborted (``Job.abort``), running or before it  complete
           started
=========  =============================================  ============
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import traceback
from collections import OrderedDict, deque
from datetime import datetime, timedelta
from typing import Any

from z4j_agents.arq.call import job_bytes

log = logging.getLogger("z4j.arq")

ENGINE = "arq"
current_job: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("z4j_arq_job", default=None)
"""(job id, root id) of the job running in this asyncio context: jobs it
enqueues get it as their parent and share its root."""
MAX_ROOTS = 10_000
RESERVED = ("_job_id", "_queue_name", "_defer_until", "_defer_by", "_expires", "_job_try")
"""``enqueue_job``'s own keyword arguments (not the job's)."""


class _State:
    """Per-process state: one agent per process."""

    def __init__(self) -> None:
        self.agent: Any = None
        self.notes: deque[tuple] = deque()
        """(ts, kind, job_id, fields, seal) notes for the agent thread; seal is
        (function, queue, job bytes) or None."""
        self.max_notes = 100_000
        self.dropped = 0
        self.enqueue_enabled = False
        self.enqueue_factory: Any = None
        """Builds the producer's agent at its first enqueue (install() sets it)."""
        self.roots: OrderedDict[str, str] = OrderedDict()
        """Root of each job enqueued by a job of this process, until it starts here."""
        self.original_enqueue: Any = None
        """``ArqRedis.enqueue_job`` before z4j wrapped it (the agent's own
        enqueues, which it records itself: retries, triggers)."""


state = _State()


def note(kind: str, job_id: str, fields: dict[str, Any], seal: tuple | None = None, ts: float | None = None) -> None:
    """Hand one thing that happened to the agent thread. Constant time; never raises."""
    try:
        notes = state.notes
        if len(notes) >= state.max_notes:
            state.dropped += 1
            return
        notes.append((time.time() if ts is None else ts, kind, job_id, fields, seal))
    except Exception:  # noqa: BLE001
        pass


def _agent_for_enqueue() -> Any:
    agent = state.agent
    if agent is None and state.enqueue_enabled and state.enqueue_factory is not None:
        factory, state.enqueue_factory = state.enqueue_factory, None
        agent = factory()
    return agent


# ------------------------------------------------------------------ producer side


def patch_enqueue() -> None:
    """Capture every ``ArqRedis.enqueue_job`` of this process (idempotent)."""
    from arq.connections import ArqRedis

    if state.original_enqueue is not None:
        return
    original = ArqRedis.enqueue_job
    state.original_enqueue = original

    async def enqueue_job(self: Any, function: str, *args: Any, **kwargs: Any) -> Any:
        job = await original(self, function, *args, **kwargs)
        if job is not None and state.enqueue_enabled:
            try:
                _sent(self, function, args, kwargs, job.job_id)
            except Exception:  # noqa: BLE001 - never in the producer's way
                log.exception("z4j arq: could not record an enqueue of %r", function)
        return job

    enqueue_job.__wrapped__ = original  # type: ignore[attr-defined]
    enqueue_job.__doc__ = original.__doc__
    ArqRedis.enqueue_job = enqueue_job  # type: ignore[method-assign]


def _sent(pool: Any, function: str, args: tuple, kwargs: dict, job_id: str) -> None:
    agent = _agent_for_enqueue()
    if agent is None:
        return
    call_kwargs = {k: v for k, v in kwargs.items() if k not in RESERVED}
    queue = kwargs.get("_queue_name") or getattr(pool, "default_queue_name", None)
    now = time.time()
    eta = _eta(kwargs.get("_defer_until"), kwargs.get("_defer_by"), now)
    fields: dict[str, Any] = {"name": function, "queue": queue, "args": list(args), "kwargs": call_kwargs,
                              "engine_state": "deferred" if eta else "queued"}
    if eta:
        fields["eta"] = eta
    try_ = kwargs.get("_job_try")
    if isinstance(try_, int) and try_ > 1:
        fields["retries"] = try_ - 1
    crons = agent.cron_names
    cron = bool(crons) and function in crons
    if cron:
        fields["extra"] = {"schedule": function}
    parent = current_job.get()
    if parent is not None:
        fields["parent_id"], fields["root_id"] = parent
        roots = state.roots
        roots[job_id] = parent[1]
        if len(roots) > MAX_ROOTS:
            roots.popitem(last=False)
    seal = (function, queue, job_bytes(function, args, call_kwargs, getattr(pool, "job_serializer", None)))
    note("sent", job_id, fields, seal, now)
    if cron:
        agent.cron_fired(function, job_id, now)


def _eta(until: Any, by: Any, now: float) -> float | None:
    try:
        if isinstance(until, datetime):
            return until.timestamp()
        if isinstance(by, timedelta):
            return now + by.total_seconds()
        if isinstance(by, (int, float)) and by > 0:
            return now + float(by)
    except Exception:  # noqa: BLE001
        pass
    return None


# ------------------------------------------------------------------ worker side


class WorkerCapture:
    """The hooks of one arq worker; built by the agent at ``on_startup``."""

    def __init__(self, agent: Any, worker: Any) -> None:
        self.agent = agent
        self.worker = worker
        self.name = agent.worker_name
        self.queue = worker.queue_name
        self.serializer = worker.job_serializer

    def wrap_functions(self) -> None:
        """Run each job through :meth:`wrap` (copies: the application's
        Function and CronJob objects are left as they are)."""
        import dataclasses

        worker = self.worker
        for name, function in list(worker.functions.items()):
            if getattr(function.coroutine, "__z4j__", False):
                continue
            worker.functions[name] = dataclasses.replace(function, coroutine=self.wrap(name, function))
        original = worker.finish_failed_job

        async def finish_failed_job(job_id: str, result_data: Any) -> None:
            self.failed_early(job_id, result_data)
            await original(job_id, result_data)

        worker.finish_failed_job = finish_failed_job

    def wrap(self, name: str, function: Any) -> Any:
        coroutine = function.coroutine
        timeout_s = self.worker.job_timeout_s if function.timeout_s is None else function.timeout_s
        capture = self

        async def job(ctx: dict, *args: Any, **kwargs: Any) -> Any:
            job_id = ctx.get("job_id") if isinstance(ctx, dict) else None
            if job_id is None:  # called by hand, not by the worker
                return await coroutine(ctx, *args, **kwargs)
            capture.started(name, job_id, ctx, args, kwargs)
            token = current_job.set((job_id, state.roots.pop(job_id, None) or job_id))
            t0 = time.perf_counter()
            try:
                result = await coroutine(ctx, *args, **kwargs)
            except BaseException as exc:
                capture.raised(name, job_id, exc, time.perf_counter() - t0, timeout_s)
                raise
            finally:
                current_job.reset(token)
            note("succeeded", job_id, {"result": result, "runtime": time.perf_counter() - t0,
                                       "engine_state": "complete"})
            return result

        job.__z4j__ = True  # type: ignore[attr-defined]
        job.__qualname__ = getattr(coroutine, "__qualname__", name)
        job.__name__ = getattr(coroutine, "__name__", name)
        job.__wrapped__ = coroutine  # type: ignore[attr-defined]
        return job

    def started(self, name: str, job_id: str, ctx: dict, args: tuple, kwargs: dict) -> None:
        try:
            job_try = ctx.get("job_try") or 1
            fields: dict[str, Any] = {"name": name, "queue": self.queue, "worker": self.name, "args": list(args),
                                      "kwargs": kwargs, "engine_state": "in_progress", "retries": job_try - 1}
            enqueued = ctx.get("enqueue_time")
            if isinstance(enqueued, datetime):
                fields["extra"] = {"job_try": job_try, "enqueue_time": enqueued.timestamp()}
            note("started", job_id, fields, (name, self.queue, job_bytes(name, args, kwargs, self.serializer)))
        except Exception:  # noqa: BLE001
            log.exception("z4j arq: could not record the start of %s", job_id)

    def raised(self, name: str, job_id: str, exc: BaseException, runtime: float, timeout_s: float | None) -> None:
        """What arq will make of the exception (arq/worker.py ``run_job``)."""
        try:
            from arq.worker import Retry, RetryJob

            worker = self.worker
            if isinstance(exc, asyncio.CancelledError):
                if job_id in worker.aborting_tasks:
                    note("revoked", job_id, {"runtime": runtime, "engine_state": "complete",
                                             "extra": {"aborted": True, "running": True}})
                    return
                if timeout_s is not None and runtime >= timeout_s * 0.999:
                    note("failed", job_id, {"exception": f"TimeoutError: job ran longer than {timeout_s:g} s",
                                            "runtime": runtime, "engine_state": "complete"})
                    return
                if worker.retry_jobs:
                    note("retried", job_id, {"exception": "CancelledError: the worker stopped; arq runs it again",
                                             "runtime": runtime, "engine_state": "queued"})
                    return
            elif worker.retry_jobs and isinstance(exc, (Retry, RetryJob)):
                defer = getattr(exc, "defer_score", None)
                fields: dict[str, Any] = {"exception": f"{type(exc).__name__}: {exc}", "runtime": runtime,
                                          "engine_state": "deferred" if defer else "queued"}
                if defer:
                    fields["eta"] = time.time() + defer / 1000
                note("retried", job_id, fields)
                return
            tb = exc.__traceback__
            tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb  # not z4j's own wrapper frame
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            note("failed", job_id, {"exception": _describe(exc), "traceback": text, "runtime": runtime,
                                    "engine_state": "complete"})
        except Exception:  # noqa: BLE001
            log.exception("z4j arq: could not record the end of %s", job_id)

    def failed_early(self, job_id: str, result_data: Any) -> None:
        """arq failed the job without running it (expired, unknown function,
        unreadable, aborted before start, max tries exceeded)."""
        try:
            fields: dict[str, Any] = {"engine_state": "complete", "worker": self.name, "queue": self.queue}
            kind = "failed"
            if result_data:
                from arq.jobs import deserialize_result

                info = deserialize_result(result_data, deserializer=self.worker.job_deserializer)
                if info.function and info.function != "<unknown>":
                    fields["name"] = info.function
                fields["retries"] = max(0, (info.job_try or 1) - 1)
                if isinstance(info.result, asyncio.CancelledError):
                    kind = "revoked"
                    fields["extra"] = {"aborted": True, "running": False}
                else:
                    fields["exception"] = _describe(info.result)
            else:
                fields["exception"] = "arq could not run or record the job"
            note(kind, job_id, fields)
        except Exception:  # noqa: BLE001
            log.exception("z4j arq: could not record the failure of %s", job_id)


def _describe(exc: Any) -> str:
    if isinstance(exc, BaseException):
        text = str(exc)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return str(exc)
