"""Celery signal handlers: what happens to tasks, as z4j task events.

Every handler is a guest in the worker: it wraps its whole body, logs what
went wrong and returns; nothing it does can fail, block or slow down a task
beyond building one small event. Events go to :func:`emit`, which hands them
to the agent (the worker's MainProcess, threads and solo pools) or to the
prefork relay (pool children; see relay.py).

Where each state comes from:

=========  ==========================================  =================
kind       signal                                      process (prefork)
=========  ==========================================  =================
sent       before/after_task_publish (producers)       publisher
received   task_received                               MainProcess
started    task_prerun                                 child
retried    task_retry                                  child
succeeded  task_success (Celery's own runtime)         child
failed     task_failure (full einfo traceback)         child / Main
revoked    task_revoked                                Main / child
rejected   task_postrun state REJECTED, task_rejected,  child / Main
           task_unknown
=========  ==========================================  =================
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.celery import call as _call
from z4j_agents.failure import exception_text

log = logging.getLogger("z4j.celery")

ENGINE = "celery"


class _State:
    """Per-process state (module global: one agent per process)."""

    def __init__(self) -> None:
        self.agent: Any = None
        """The CeleryAgent of this process (inherited by prefork children, never used there to send)."""
        self.relay_client: Any = None
        """Set in prefork children: where their events go."""
        self.publish_enabled = False
        """install(app) in a producer: the first publish starts an agent."""
        self.publish_factory: Any = None
        self.starts: dict[str, float] = {}
        self.republished: dict[str, float] = {}
        """Running tasks that published their own retry (when), so that
        ``retried`` is dated before the new message's ``sent``."""
        self.lock = threading.Lock()


state = _State()
_tls = threading.local()


def emit(event: p.Event) -> None:
    """Hand one event on; never raises."""
    try:
        client = state.relay_client
        if client is not None:
            client.send(event)
            return
        agent = state.agent
        if agent is not None:
            agent.runtime.emit(event)
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: could not hand an event on")


def _secret() -> str | None:
    agent = state.agent
    return agent.config.hmac_secret if agent is not None else None


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.timestamp()
    except (ValueError, TypeError, OverflowError):
        return None
    return None


def _chord_id(chord: Any) -> str | None:
    """The chord callback's task id from a header task's embedded chord body."""
    try:
        if chord:
            options = chord.get("options") or {}
            task_id = options.get("task_id")
            return str(task_id) if task_id else None
    except Exception:  # noqa: BLE001
        return None
    return None


def _task_event(task_id: str, kind: str, engine_state: str, **fields: Any) -> p.TaskEvent:
    event = p.TaskEvent(id=p.new_id(), task_id=str(task_id), engine=ENGINE, kind=kind,
                        ts=time.time(), engine_state=engine_state)
    for key, value in fields.items():
        if value is not None:
            setattr(event, key, value)
    if event.parent_id == event.task_id:
        event.parent_id = None  # Task.retry re-publishes itself from inside its own run
    return event


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------ publish side


def on_before_task_publish(sender: Any = None, body: Any = None, exchange: Any = None, routing_key: Any = None,
                           declare: Any = None, headers: Any = None, properties: Any = None, **_: Any) -> None:
    _tls.pending = None
    try:
        if state.agent is None and not _start_publish_agent():
            return
        secret = _secret()
        headers = headers or {}
        properties = properties or {}
        task_id = headers.get("id")
        name = headers.get("task") or sender
        if isinstance(body, dict) and task_id is None:  # task protocol 1
            task_id, name = body.get("id"), body.get("task", name)
        if not task_id:
            return
        if task_id in state.starts:  # a running task re-publishing itself: Task.retry
            state.republished[task_id] = time.time()
        if isinstance(body, (tuple, list)) and len(body) == 3:
            args, kwargs, embed = body
        elif isinstance(body, dict):
            args, kwargs, embed = body.get("args"), body.get("kwargs"), body
        else:
            args = kwargs = None
            embed = {}
        queue = None
        if declare:
            queue = getattr(declare[0], "name", None)
        queue = queue or routing_key
        priority = properties.get("priority")
        replay = None
        if secret:
            replay = _seal_published(secret, name, task_id, body, headers, exchange, routing_key, queue, priority)
        extra = {k: v for k, v in (("routing_key", _str(routing_key)), ("exchange", _str(exchange)),
                                   ("group_index", headers.get("group_index")), ("priority", priority),
                                   ("expires", _str(headers.get("expires"))), ("origin", _str(headers.get("origin"))),
                                   ("retry_of", _str(headers.get("z4j_retry_of"))))
                 if v is not None}
        _tls.pending = _task_event(
            task_id, "sent", "PENDING", name=_str(name), queue=_str(queue), args=args, kwargs=kwargs,
            retries=headers.get("retries"), eta=_ts(headers.get("eta")), parent_id=_str(headers.get("parent_id")),
            root_id=_str(headers.get("root_id")), group_id=_str(headers.get("group")),
            chord_id=_chord_id((embed or {}).get("chord")), replay=replay, extra=extra or None,
        )
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: before_task_publish handler failed")


def _seal_published(secret: str, name: Any, task_id: str, body: Any, headers: dict, exchange: Any,
                    routing_key: Any, queue: Any, priority: Any) -> bytes | None:
    from kombu.serialization import dumps

    agent = state.agent
    app = agent.app if agent is not None else None
    serializer = None
    if app is not None:
        task = app.tasks.get(name) if name else None
        serializer = getattr(task, "serializer", None) or app.conf.task_serializer
    try:
        content_type, content_encoding, data = dumps(body, serializer=serializer or "json")
    except Exception as exc:  # noqa: BLE001 - the publish itself will say what is wrong
        log.debug("z4j celery: cannot serialize %s for replay: %s", task_id, exc)
        return None
    return _call.pack_call(secret, task=str(name), task_id=str(task_id), body=data, content_type=content_type,
                           content_encoding=content_encoding, headers=headers, exchange=_str(exchange),
                           routing_key=_str(routing_key), queue=_str(queue), priority=priority)


def on_after_task_publish(sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
    try:
        event = getattr(_tls, "pending", None)
        _tls.pending = None
        if event is None:
            return
        task_id = (headers or {}).get("id") or (body.get("id") if isinstance(body, dict) else None)
        if task_id is not None and str(task_id) == event.task_id:
            emit(event)  # dated before the publish: a worker may receive it before this line
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: after_task_publish handler failed")


def _start_publish_agent() -> bool:
    if not state.publish_enabled or state.publish_factory is None or state.relay_client is not None:
        return False
    with state.lock:
        if state.agent is None:
            state.agent = state.publish_factory()
    return state.agent is not None


# ------------------------------------------------------------------ worker side


def on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    try:
        if state.agent is None or request is None:
            return
        headers = request.request_dict
        delivery = request.delivery_info or {}
        queue = delivery.get("routing_key")
        replay = None
        secret = _secret()
        if secret and request.body is not None and request.content_type:
            replay = _call.pack_call(
                secret, task=str(request.type), task_id=str(request.id), body=request.body,
                content_type=request.content_type, content_encoding=request.content_encoding,
                headers=request.message.headers, exchange=_str(delivery.get("exchange")),
                routing_key=_str(delivery.get("routing_key")), queue=_str(queue), priority=delivery.get("priority"))
        extra = {k: v for k, v in (("routing_key", _str(delivery.get("routing_key"))),
                                   ("exchange", _str(delivery.get("exchange"))),
                                   ("priority", delivery.get("priority")),
                                   ("redelivered", delivery.get("redelivered") or None),
                                   ("group_index", headers.get("group_index")),
                                   ("expires", _str(headers.get("expires"))),
                                   ("retry_of", _str(headers.get("z4j_retry_of"))))
                 if v is not None}
        emit(_task_event(
            request.id, "received", "RECEIVED", name=_str(request.name), queue=_str(queue),
            worker=_str(request.hostname), args=request.args, kwargs=request.kwargs,
            retries=headers.get("retries"), eta=_ts(request.eta), parent_id=_str(request.parent_id),
            root_id=_str(request.root_id), group_id=_str(request.group), chord_id=_chord_id(request.chord),
            replay=replay, extra=extra or None,
        ))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_received handler failed")


def on_task_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        if state.agent is None or task_id is None:
            return
        state.starts[task_id] = time.monotonic()
        req = getattr(task, "request", None)
        emit(_task_event(task_id, "started", "STARTED", name=_str(getattr(task, "name", None)),
                         worker=_str(getattr(req, "hostname", None)), extra={"pid": os.getpid()}))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_prerun handler failed")


def _runtime(task_id: Any, pop: bool = False) -> float | None:
    start = state.starts.pop(task_id, None) if pop else state.starts.get(task_id)
    return None if start is None else time.monotonic() - start


def on_task_success(sender: Any = None, result: Any = None, runtime: Any = None, **_: Any) -> None:
    try:
        if state.agent is None:
            return
        req = sender.request
        task_id = req.id
        rt = runtime if isinstance(runtime, (int, float)) else _runtime(task_id)
        emit(_task_event(task_id, "succeeded", "SUCCESS", name=_str(sender.name), worker=_str(req.hostname),
                         result=result, runtime=float(rt) if rt is not None else None))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_success handler failed")


def on_task_failure(sender: Any = None, task_id: Any = None, exception: Any = None, einfo: Any = None,
                    **_: Any) -> None:
    try:
        if state.agent is None or task_id is None:
            return
        tb = getattr(einfo, "traceback", None)
        req = getattr(sender, "request", None)
        worker = getattr(req, "hostname", None) if getattr(req, "id", None) == task_id else None
        emit(_task_event(task_id, "failed", "FAILURE", name=_str(getattr(sender, "name", None)),
                         worker=_str(worker), exception=exception_text(exception),
                         traceback=str(tb) if tb else None, runtime=_runtime(task_id)))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_failure handler failed")


def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
    try:
        if state.agent is None or request is None:
            return
        exc = getattr(reason, "exc", None)
        text = exception_text(exc) if exc is not None else (str(reason) if reason is not None else None)
        tb = getattr(einfo, "traceback", None)
        extra = {"retry_at": _ts(getattr(reason, "when", None))} if getattr(reason, "when", None) else None
        if extra and extra["retry_at"] is None:
            extra = None
        event = _task_event(request.id, "retried", "RETRY", name=_str(getattr(sender, "name", None)),
                            worker=_str(getattr(request, "hostname", None)), exception=text,
                            traceback=str(tb) if tb else None, retries=getattr(request, "retries", None),
                            runtime=_runtime(request.id), extra=extra)
        republished = state.republished.pop(request.id, None)
        if republished is not None:
            # Celery signals the retry after publishing the new attempt, which a
            # fast worker may already have received: date it where it happened.
            event.ts = min(event.ts, republished - 1e-6)
        emit(event)
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_retry handler failed")


def on_task_postrun(sender: Any = None, task_id: Any = None, task: Any = None, state: Any = None,
                    retval: Any = None, **_: Any) -> None:
    try:
        if _state_agent() is None or task_id is None:
            return
        rt = _runtime(task_id, pop=True)
        _state_republished().pop(task_id, None)
        if state == "REJECTED":
            req = getattr(task, "request", None)
            emit(_task_event(task_id, "rejected", "REJECTED", name=_str(getattr(task, "name", None)),
                             worker=_str(getattr(req, "hostname", None)),
                             exception=exception_text(retval) if isinstance(retval, BaseException) else None,
                             runtime=rt))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_postrun handler failed")


def _state_agent() -> Any:
    return state.agent


def _state_republished() -> dict[str, float]:
    return state.republished


def on_task_revoked(sender: Any = None, request: Any = None, terminated: Any = None, signum: Any = None,
                    expired: Any = None, **_: Any) -> None:
    try:
        if state.agent is None or request is None:
            return
        task_id = getattr(request, "id", None)
        if task_id is None:
            return
        extra = {"terminated": bool(terminated), "expired": bool(expired)}
        if signum is not None:
            extra["signum"] = int(signum)
        name = getattr(request, "task", None) or getattr(sender, "name", None)
        emit(_task_event(task_id, "revoked", "REVOKED", name=_str(name) if isinstance(name, str) else None,
                         worker=_str(getattr(request, "hostname", None)), extra=extra))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_revoked handler failed")


def _message_ids(message: Any) -> tuple[str | None, str | None]:
    headers = getattr(message, "headers", None) or {}
    task_id, name = headers.get("id"), headers.get("task")
    return _str(task_id), _str(name)


def on_task_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    try:
        if state.agent is None:
            return
        task_id, name = _message_ids(message)
        if task_id is None:
            return
        emit(_task_event(task_id, "rejected", "REJECTED", name=name, worker=_str(getattr(sender, "hostname", None)),
                         exception=exception_text(exc) if exc is not None else "unknown message format"))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_rejected handler failed")


def on_task_unknown(sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, id: Any = None,
                    **_: Any) -> None:  # noqa: A002 - Celery's argument name
    try:
        if state.agent is None or id is None:
            return
        emit(_task_event(id, "rejected", "REJECTED", name=_str(name), worker=_str(getattr(sender, "hostname", None)),
                         exception=f"NotRegistered: task {name!r} is not registered in this worker",
                         extra={"unknown": True}))
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: task_unknown handler failed")


_connected = False


def connect_task_signals() -> None:
    """Connect the task handlers once per process (strong references)."""
    global _connected
    if _connected:
        return
    from celery import signals

    for signal, handler in (
        (signals.before_task_publish, on_before_task_publish),
        (signals.after_task_publish, on_after_task_publish),
        (signals.task_received, on_task_received),
        (signals.task_prerun, on_task_prerun),
        (signals.task_success, on_task_success),
        (signals.task_failure, on_task_failure),
        (signals.task_retry, on_task_retry),
        (signals.task_postrun, on_task_postrun),
        (signals.task_revoked, on_task_revoked),
        (signals.task_rejected, on_task_rejected),
        (signals.task_unknown, on_task_unknown),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"z4j.celery.{handler.__name__}")
    _connected = True
