"""Huey signals and the post-execute hook, as z4j task events.

One :class:`Binding` per Huey instance (``install(huey)``). Its receivers run
where Huey sends its signals: in the producer (enqueue), in the consumer's
worker threads or processes (execution) and in its scheduler (periodic and
scheduled tasks). Each wraps its whole body: nothing here can fail, block or
slow a task beyond building one small event.

=========  ===================================================  ==============
kind       Huey hook                                            engine_state
=========  ===================================================  ==============
sent       SIGNAL_ENQUEUED (producer, pipelines, retries,       ENQUEUED
           periodic), SIGNAL_SCHEDULED (eta, retry delay)       SCHEDULED
started    SIGNAL_EXECUTING                                     EXECUTING
succeeded  post_execute hook, no exception (result, runtime)    COMPLETE
retried    post_execute hook, exception and retries left        RETRYING
failed     post_execute hook, exception and no retry left       ERROR, TIMEOUT,
                                                                LOCKED,
                                                                RATE_LIMITED
revoked    SIGNAL_REVOKED, SIGNAL_EXPIRED, SIGNAL_CANCELED,     REVOKED, EXPIRED,
           CancelExecution raised by the task                   CANCELED
lost       SIGNAL_INTERRUPTED (the consumer stopped mid-task)   INTERRUPTED
=========  ===================================================  ==============

The outcome comes from the post-execute hook rather than from Huey's
error/complete signals because only there is it certain whether a retry
follows (``task.retries`` is final by then): a ``failed`` that a ``retried``
would follow must never be sent, z4j never demotes a terminal state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.failure import exception_text, traceback_text
from z4j_agents.huey import call as _call

log = logging.getLogger("huey.z4j")

ENGINE = "huey"
INTERRUPTED = "Interrupted: the consumer stopped before the task finished"
_FAILED_STATES = {"TaskTimeout": "TIMEOUT", "TaskLockedException": "LOCKED", "RateLimitExceeded": "RATE_LIMITED"}


class Settings:
    """What ``install(huey, ...)`` was given."""

    def __init__(self) -> None:
        self.config: Any = None
        self.redactor: Any = None
        self.options: dict[str, Any] = {}
        self.capture_enqueue = True


class Binding:
    """z4j on one Huey instance, in one process."""

    def __init__(self, huey: Any) -> None:
        self.huey = huey
        self.settings = Settings()
        self.agent: Any = None
        """This process's HueyAgent (a forked worker process inherits the consumer's, never sends with it)."""
        self.relay_client: Any = None
        """Set in forked worker processes: where their events go."""
        self.consumer: Any = None
        self.starts: dict[str, float] = {}
        self._names: dict[type, str] = {}
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._producer_off = False

    # ------------------------------------------------------------ plumbing

    def emit(self, event: p.Event) -> None:
        """Hand one event on; never raises."""
        try:
            client = self.relay_client
            if client is not None:
                client.send(event)
                return
            agent = self.agent
            if agent is not None:
                agent.emit(event)
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: could not hand an event on")

    def ready(self) -> bool:
        """An agent (or the relay) to send to; a producer starts its agent here."""
        if self.agent is not None or self.relay_client is not None:
            return True
        if self._producer_off or not self.settings.capture_enqueue:
            return False
        from z4j_agents.huey.agent import start_producer_agent

        with self._lock:
            if self.agent is None and not self._producer_off:
                self.agent = start_producer_agent(self)
                self._producer_off = self.agent is None
        return self.agent is not None

    def name_of(self, task: Any) -> str:
        cls = type(task)
        name = self._names.get(cls)
        if name is None:
            name = self._names[cls] = self.huey._registry.task_to_string(cls)
        return name

    def worker(self) -> str | None:
        agent = self.agent
        return agent.worker_name if agent is not None else None

    def seal(self, task: Any, name: str, message: bytes | None = None) -> bytes | None:
        agent = self.agent
        if agent is None:
            return None
        try:
            return _call.pack_call(agent.config.hmac_secret, self.huey, task, name, message)
        except Exception as exc:  # noqa: BLE001 - the enqueue itself will say what is wrong
            log.debug("z4j huey: cannot seal %s for replay: %s", task.id, exc)
            return None

    def _event(self, task: Any, kind: str, engine_state: str, name: str | None = None, **fields: Any) -> p.TaskEvent:
        return p.TaskEvent(id=p.new_id(), task_id=str(task.id), engine=ENGINE, kind=kind, ts=time.time(),
                           engine_state=engine_state, name=name or self.name_of(task), queue=self.huey.name,
                           **{k: v for k, v in fields.items() if v is not None})

    def _eta(self, eta: Any) -> float | None:
        if not isinstance(eta, datetime):
            return None
        try:
            if eta.tzinfo is None and self.huey.utc:
                eta = eta.replace(tzinfo=timezone.utc)
            return eta.timestamp()
        except (ValueError, OverflowError, OSError):
            return None

    # ------------------------------------------------------------ enqueue side

    def on_enqueued(self, signal: str, task: Any, *_: Any, **__: Any) -> None:
        try:
            if not self.ready():
                return
            name = self.name_of(task)
            tls = self._tls
            ctx = getattr(tls, "ctx", None)
            parent = group = None
            if ctx is not None and ctx.id != task.id:
                if getattr(tls, "running", False) or task.id in _children(ctx):
                    parent = ctx.id
                    callback = _chord_of(ctx)
                    if callback is not None and callback.callback.id == task.id:
                        group = callback.cid  # a chord callback: the header's group
            chord = getattr(task, "chord_config", None)
            extra: dict[str, Any] = {}
            retry_of = getattr(tls, "retry_of", None)
            if retry_of:
                extra["retry_of"] = retry_of
            if _is_fire(task, ctx):
                extra["schedule"] = f"{self.huey.name}:{name}"  # schedules.schedule_name
                if getattr(tls, "manual", False):
                    extra["manual"] = True
            self.emit(self._event(
                task, "sent", "ENQUEUED", name, args=task.args, kwargs=task.kwargs, eta=self._eta(task.eta),
                retries=_retries_done(task), parent_id=parent,
                group_id=chord.cid if chord is not None else group,
                chord_id=chord.callback.id if chord is not None else None,
                replay=self.seal(task, name), extra=extra or None))
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: enqueued receiver failed")

    def on_scheduled(self, signal: str, task: Any, *_: Any, **__: Any) -> None:
        try:
            if not self.ready():
                return
            self.emit(self._event(task, "sent", "SCHEDULED", eta=self._eta(task.eta), retries=_retries_done(task)))
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: scheduled receiver failed")

    # ------------------------------------------------------------ execution

    def on_executing(self, signal: str, task: Any, *_: Any, **__: Any) -> None:
        try:
            tls = self._tls
            tls.ctx = task
            tls.running = True
            if not self.ready():
                return
            self.starts[task.id] = time.monotonic()
            name = self.name_of(task)
            chord = getattr(task, "chord_config", None)  # Huey releases without chords have none
            dequeued = getattr(tls, "dequeued", None)
            message = dequeued[1] if dequeued is not None and dequeued[0] == task.id else None
            self.emit(self._event(
                task, "started", "EXECUTING", name, worker=self.worker(), args=task.args, kwargs=task.kwargs,
                retries=_retries_done(task), group_id=chord.cid if chord is not None else None,
                chord_id=chord.callback.id if chord is not None else None, replay=self.seal(task, name, message),
                # a forked worker process: the consumer follows its running tasks by pid (agent.Monitor.reap)
                extra={"pid": os.getpid()} if self.relay_client is not None else None))
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: executing receiver failed")

    def post_execute(self, task: Any, value: Any, exc: BaseException | None) -> None:
        """Huey's post-execute hook: success, retry or final failure, with certainty."""
        try:
            self._tls.running = False
            if not self.ready():
                return
            start = self.starts.pop(task.id, None)
            runtime = time.monotonic() - start if start is not None else None
            worker = self.worker()
            if exc is None:
                self.emit(self._event(task, "succeeded", "COMPLETE", result=value, runtime=runtime, worker=worker))
                return
            text, tb = exception_text(exc), traceback_text(exc)
            if task.retries:
                self.emit(self._event(task, "retried", "RETRYING", exception=text, traceback=tb, runtime=runtime,
                                      worker=worker, retries=_retries_done(task),
                                      extra={"retries_left": int(task.retries)}))
            elif type(exc).__name__ == "CancelExecution":
                self.emit(self._event(task, "revoked", "CANCELED", exception=text, runtime=runtime, worker=worker,
                                      extra={"canceled": True}))
            else:
                state = _FAILED_STATES.get(type(exc).__name__, "ERROR")
                self.emit(self._event(task, "failed", state, exception=text, traceback=tb, runtime=runtime,
                                      worker=worker))
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: post-execute hook failed")

    def on_revoked(self, signal: str, task: Any, *_: Any, **__: Any) -> None:
        try:
            if not self.ready():
                return
            expired = signal == "expired"
            self.emit(self._event(task, "revoked", "EXPIRED" if expired else "REVOKED", worker=self.worker(),
                                  extra={"expired": expired}))
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: revoked receiver failed")

    def on_canceled(self, signal: str, task: Any, *_: Any, **__: Any) -> None:
        # Raised inside the task, CancelExecution reaches the post-execute hook
        # (which knows whether a retry follows); raised by a pre-execute hook,
        # the task never ran and this is all Huey says.
        try:
            import sys

            exc = sys.exc_info()[1]
            if exc is None or not _from_pre_execute(exc):
                return
            self._tls.running = False
            if not self.ready():
                return
            self.starts.pop(task.id, None)
            self.emit(self._event(task, "revoked", "CANCELED", exception=exception_text(exc), worker=self.worker(),
                                  extra={"canceled": True, "pre_execute": True}))
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: canceled receiver failed")

    def on_interrupted(self, signal: str, task: Any, *_: Any, **__: Any) -> None:
        try:
            self._tls.running = False
            if not self.ready():
                return
            start = self.starts.pop(task.id, None)
            self.emit(self._event(task, "lost", "INTERRUPTED", exception=INTERRUPTED, worker=self.worker(),
                                  runtime=time.monotonic() - start if start is not None else None))
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: interrupted receiver failed")

    def wrap_dequeue(self) -> None:
        """Keep the message bytes the consumer's worker just took (this
        instance's ``dequeue`` only, and only where it is Huey's own): the
        sealed call is then the message exactly as it was queued, and is not
        serialized a second time. Same steps as ``Huey.dequeue``."""
        from huey.api import Huey

        huey = self.huey
        if type(huey).dequeue is not Huey.dequeue:
            return  # a subclass with its own dequeue: keep it (capture serializes the task instead)
        tls = self._tls

        def dequeue() -> Any:
            data = huey.storage.dequeue()
            if data is not None:
                task = huey.deserialize_task(data)
                tls.dequeued = (task.id, data)
                return task
            return None

        huey.dequeue = dequeue

    # ------------------------------------------------------------ wiring

    def connect(self) -> None:
        """Connect the receivers and the post-execute hook to this Huey (once)."""
        from huey import signals as S

        huey = self.huey
        for receiver, signals in (
            (self.on_enqueued, (S.SIGNAL_ENQUEUED,)),
            (self.on_scheduled, (S.SIGNAL_SCHEDULED,)),
            (self.on_executing, (S.SIGNAL_EXECUTING,)),
            (self.on_revoked, (S.SIGNAL_REVOKED, S.SIGNAL_EXPIRED)),
            (self.on_canceled, (S.SIGNAL_CANCELED,)),
            (self.on_interrupted, (S.SIGNAL_INTERRUPTED,)),
        ):
            huey._signal.connect(receiver, *signals)
        huey.post_execute(name="z4j")(self.post_execute)


# ---------------------------------------------------------------- helpers


def _children(task: Any) -> set[str]:
    """Ids of what the consumer enqueues after ``task`` ran: the next step of
    its pipeline, its error handler, its chord's callback."""
    ids = set()
    for link in (task.on_complete, task.on_error):
        if link is not None:
            ids.add(link.id)
    chord = _chord_of(task)
    if chord is not None:
        ids.add(chord.callback.id)
    return ids


def _chord_of(task: Any) -> Any:
    """The chord config of ``task``'s pipeline (Huey puts it on the tail)."""
    node = task
    for _ in range(1000):
        if node is None:
            return None
        chord = getattr(node, "chord_config", None)
        if chord is not None:
            return chord
        node = node.on_complete
    return None


def _is_fire(task: Any, ctx: Any) -> bool:
    """A periodic task enqueued by the scheduler (or a manual trigger), not a
    retry of one: fresh instances have no eta and are not the running task."""
    from huey.api import PeriodicTask

    return isinstance(task, PeriodicTask) and task.eta is None and (ctx is None or ctx.id != task.id)


def _retries_done(task: Any) -> int | None:
    """Retries so far: Huey counts down from the task's ``retries=``."""
    default = getattr(type(task), "default_retries", 0) or 0
    left = task.retries or 0
    return default - left if 0 < default and left <= default else None


def _from_pre_execute(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_run_pre_execute":
            return True
        tb = tb.tb_next
    return False
