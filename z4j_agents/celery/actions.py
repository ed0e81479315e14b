"""Celery actions: the commands a Celery agent runs for the collector.

``register(agent, app)`` declares them on a (not yet started) bare ``Agent``:

* ``celery.retry {task_id, replay}``: opens the call the agent sealed at
  publish time (z4j_agents/replay.py; only this agent's secret opens it) and
  publishes it again under a new id, with the same arguments, body, routing
  and canvas headers; the new message carries ``z4j_retry_of``. Never from
  the redacted display copies.
* ``celery.cancel {task_id, terminate, queue?}``: ``control.revoke`` (with
  ``terminate=True, signal=SIGTERM`` for a running task); a queued task's
  message is also taken out of its Redis queue.
* ``celery.purge {queue, name?, older_than_s?}``: the whole queue through the
  broker, or (Redis) only the messages matching a task name or an age.
* ``celery.worker_control {worker, op, ...}``: Flower's controls through
  ``app.control`` with ``destination=[worker]``.
* ``celery.inspect {worker?, what}``: ``app.control.inspect()`` read-outs.

Handlers run on the agent's command threads, never in a task; a refusal is a
``CommandError`` with one line the operator reads.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.runtime import CommandError
from z4j_agents.sealed_call import open_from_command

log = logging.getLogger("z4j.celery.actions")

REPLY_TIMEOUT = 3.0
"""Seconds to wait for workers' replies to a control command."""
SENT_AT_HEADER = "z4j_sent_at"
"""Publish time, stamped by producers running the agent (purge by age)."""
RETRY_OF_HEADER = "z4j_retry_of"
SCAN_CHUNK = 1000
FORKING_OPS = ("pool_grow", "autoscale", "pool_restart")
FORK_SETTLE_S = 1.0
"""After an op that forks, wait this long before reading the worker's stats."""

_DROPPED_HEADERS = ("eta", "expires")
"""A retry runs now: an old ETA or expiry must not delay or revoke it."""
INSPECT = ("ping", "stats", "active", "reserved", "scheduled", "registered", "active_queues", "revoked", "conf")


def register(agent: Any, app: Any) -> None:
    """Declare the Celery actions on ``agent`` (before it starts)."""
    actions = CeleryActions(agent, app)
    runtime = agent.runtime
    runtime.on_command("celery.retry", actions.retry)
    runtime.on_command("celery.cancel", actions.cancel)
    runtime.on_command("celery.purge", actions.purge)
    runtime.on_command("celery.worker_control", actions.worker_control)
    runtime.on_command("celery.inspect", actions.inspect)
    from z4j_agents.celery import probe

    probe.register(agent, app)  # celery.probe: the reconciler asks the result backend
    try:
        from celery.signals import before_task_publish

        before_task_publish.connect(_stamp_sent_at, weak=False, dispatch_uid="z4j.celery.actions.sent_at")
    except Exception:  # noqa: BLE001 - without the stamp, purge by age keeps what it cannot date
        log.exception("z4j celery: could not connect before_task_publish")


def _stamp_sent_at(sender: Any = None, headers: dict | None = None, **_: Any) -> None:
    try:
        if isinstance(headers, dict) and SENT_AT_HEADER not in headers:
            headers[SENT_AT_HEADER] = time.time()
    except Exception:  # noqa: BLE001 - never raise into the publisher
        pass


class CeleryActions:
    def __init__(self, agent: Any, app: Any) -> None:
        self.agent = agent
        self.app = app
        self._private: Any = None

    @property
    def control(self) -> Any:
        """``app.control`` where every call gets a fresh ``Control`` and its
        own new broker connection, on a private app on the same broker.

        kombu's Mailbox remembers the reply queue it declared per connection
        and names it after the calling thread, while the queue is deleted
        when the call ends: a Control or a pooled connection used again (or
        from another command thread) waits for replies that never come. The
        private app never borrows the worker's own pools.
        """
        if self._private is None:
            from celery import Celery

            private = Celery(self.app.main, set_as_current=False)
            private.conf.update({key: value for key, value in self.app.conf.items()
                                 if key.startswith(("broker_", "control_")) and value is not None})
            self._private = private
        return _FreshControl(self._private)

    # ------------------------------------------------------------ retry

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        from z4j_agents.celery.call import open_call

        old_id = _str(args, "task_id")
        call = open_from_command(args, old_id, lambda blob: open_call(_secret(self.agent), blob),
                                 outcome="nothing was published")
        new_id = str(uuid.uuid4())
        name, queue, headers = self._publish(call, old_id, new_id)
        # The new task's own event names the task it retries (shown in its
        # timeline; the command's result and the audit hold the link too).
        self.agent.runtime.emit(p.TaskEvent(
            id=p.new_id(), task_id=new_id, engine="celery", kind="sent", ts=time.time(), engine_state="PENDING",
            name=name, queue=queue, parent_id=_opt(headers.get("parent_id")), root_id=_opt(headers.get("root_id")),
            group_id=_opt(headers.get("group")), extra={"retry_of": old_id}))
        return {"new_task_id": new_id, "retry_of": old_id, "name": name, "queue": queue}

    def _publish(self, call: dict[str, Any], old_id: str, new_id: str) -> tuple[str, str | None, dict]:
        from celery.app.amqp import task_message
        from kombu.serialization import registry

        name = call.get("task")
        if not isinstance(name, str) or not name:
            raise CommandError(f"the sealed call of {old_id} names no task; nothing was published")
        headers = dict(call.get("headers") or {})
        for key in (*_DROPPED_HEADERS, SENT_AT_HEADER):
            headers.pop(key, None)
        headers.update({"id": new_id, "task": name, "retries": 0, RETRY_OF_HEADER: old_id})
        if headers.get("root_id") in (None, old_id):
            headers["root_id"] = new_id  # a task that was its own root stays its own root
        properties: dict[str, Any] = {"correlation_id": new_id}
        if call.get("priority") is not None:
            properties["priority"] = call["priority"]
        body = (call["args"], call["kwargs"], call["embed"] or {})
        serializer = registry.type_to_name.get(call.get("content_type") or "")
        exchange, routing_key, queue = call.get("exchange") or None, call.get("routing_key"), call.get("queue")
        with self.app.producer_or_acquire() as producer:
            self.app.amqp.send_task_message(
                producer, name, task_message(headers, properties, body, None),
                queue=queue if not exchange else None, exchange=exchange, routing_key=routing_key,
                serializer=serializer,
            )
        log.info("z4j celery: retried %s as %s (%s)", old_id, new_id, name)
        return name, queue or routing_key, headers

    # ------------------------------------------------------------ cancel

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        task_id = _str(args, "task_id")
        terminate = bool(args.get("terminate"))
        if terminate:
            # No waiting for replies here: the pool forks a replacement for
            # the killed process meanwhile, and a child forked while this
            # thread waits on a broker connection can hang at start. Count
            # the workers first instead.
            replies = self.control.ping(timeout=1.0) or []
            if replies:
                self.control.revoke(task_id, terminate=True, signal="SIGTERM")
        else:
            replies = self.control.revoke(task_id, reply=True, timeout=REPLY_TIMEOUT) or []
        removed = 0
        queue = args.get("queue")
        if not terminate and isinstance(queue, str) and queue:
            removed = self._remove(queue, lambda message: _headers(message).get("id") == task_id)[0]
        if not replies and not removed:
            raise CommandError(f"no worker answered the revoke of {task_id} within {REPLY_TIMEOUT:.0f} s and its "
                               f"message was not found in a queue; nothing changed")
        if not terminate:
            # A revoked queued task only shows as revoked when a worker meets
            # its message; say so now (the worker's own event may follow).
            self.agent.runtime.emit(p.TaskEvent(id=p.new_id(), task_id=task_id, engine="celery", kind="revoked",
                                                ts=time.time(), engine_state="REVOKED"))
        return {"task_id": task_id, "terminate": terminate, "workers": len(replies), "removed_from_queue": removed}

    # ------------------------------------------------------------ purge

    def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = _str(args, "queue")
        name = args.get("name")
        older_than = args.get("older_than_s")
        if name is None and older_than is None:
            with self.app.connection_for_write() as conn:
                purged = conn.default_channel.queue_purge(queue) or 0
            log.warning("z4j celery: purged %d message(s) of queue %s", purged, queue)
            return {"queue": queue, "purged": purged}
        cutoff = time.time() - float(older_than) if older_than is not None else None
        undated = 0

        def match(message: dict) -> bool:
            nonlocal undated
            headers = _headers(message)
            if name is not None and headers.get("task") != name:
                return False
            if cutoff is not None:
                sent_at = headers.get(SENT_AT_HEADER)
                if not isinstance(sent_at, (int, float)):
                    undated += 1
                    return False
                return sent_at < cutoff
            return True

        purged, scanned = self._remove(queue, match)
        log.warning("z4j celery: purged %d of %d message(s) of queue %s (name=%s older_than_s=%s)",
                    purged, scanned, queue, name, older_than)
        return {"queue": queue, "purged": purged, "scanned": scanned, "kept_undated": undated}

    def _remove(self, queue: str, match: Any) -> tuple[int, int]:
        """Take the messages ``match`` accepts out of a Redis queue (all its
        priority sub-queues): one pass reads the list, then each match is
        removed by value (LREM), so a message a worker took meanwhile, or
        one pushed meanwhile, is never touched by mistake."""
        with self.app.connection_for_write() as conn:
            if conn.transport.driver_type != "redis":
                raise CommandError(f"purging by name or age needs the Redis broker; this worker uses "
                                   f"{conn.transport.driver_type}")
            channel = conn.default_channel
            removed = scanned = 0
            with channel.conn_or_acquire() as client:
                for key in dict.fromkeys(channel._q_for_pri(queue, pri) for pri in channel.priority_steps):
                    matches = []
                    start = 0
                    while True:
                        chunk = client.lrange(key, start, start + SCAN_CHUNK - 1)
                        if not chunk:
                            break
                        start += len(chunk)
                        for raw in chunk:
                            scanned += 1
                            try:
                                message = json.loads(raw)
                            except ValueError:
                                continue
                            if isinstance(message, dict) and match(message):
                                matches.append(raw)
                    for begin in range(0, len(matches), 500):
                        with client.pipeline() as pipe:
                            for raw in matches[begin:begin + 500]:
                                pipe.lrem(key, 1, raw)
                            removed += sum(pipe.execute())
            return removed, scanned

    # ------------------------------------------------------------ worker controls

    def worker_control(self, args: dict[str, Any]) -> dict[str, Any]:
        worker = _str(args, "worker")
        op = _str(args, "op")
        control = self.control
        dest = {"destination": [worker], "reply": True, "timeout": REPLY_TIMEOUT}
        if op in FORKING_OPS:
            return self._forking(worker, op, args)
        if op == "pool_shrink":
            replies = control.pool_shrink(int(args.get("n", 1)), **dest)
        elif op == "add_consumer":
            replies = control.add_consumer(_str(args, "queue"), **dest)
        elif op == "cancel_consumer":
            replies = control.cancel_consumer(_str(args, "queue"), **dest)
        elif op == "rate_limit":
            replies = control.rate_limit(_str(args, "task_name"), _str(args, "rate"), **dest)
        elif op == "time_limit":
            replies = control.time_limit(_str(args, "task_name"), soft=args.get("soft"), hard=args.get("hard"), **dest)
        elif op == "shutdown":
            # A worker that shuts down does not answer: check that it is
            # there first, then send.
            if not control.ping(destination=[worker], timeout=REPLY_TIMEOUT):
                raise CommandError(f"worker {worker} did not answer a ping within {REPLY_TIMEOUT:.0f} s; "
                                   "nothing was sent")
            control.shutdown(destination=[worker])
            return {"worker": worker, "op": op, "reply": {"ok": "shutdown sent"}}
        else:
            raise CommandError(f"unknown op {op!r}")
        return {"worker": worker, "op": op, "reply": _one_reply(worker, op, replies)}

    def _forking(self, worker: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Ops that make the pool fork: sent without waiting for the reply
        (a pool child forked while this thread waits on a broker connection
        can hang at start), then checked with the worker's own stats."""
        control = self.control
        if not control.ping(destination=[worker], timeout=REPLY_TIMEOUT):
            raise CommandError(f"worker {worker} did not answer a ping within {REPLY_TIMEOUT:.0f} s "
                               "(unknown name, or offline); nothing was sent")
        if op == "pool_grow":
            control.pool_grow(int(args.get("n", 1)), destination=[worker])
        elif op == "autoscale":
            control.autoscale(int(args["max"]), int(args["min"]), destination=[worker])
        else:
            control.pool_restart(reload=bool(args.get("reload")), destination=[worker])
        time.sleep(FORK_SETTLE_S)
        stats = (control.inspect(destination=[worker], timeout=REPLY_TIMEOUT).stats() or {}).get(worker) or {}
        pool = stats.get("pool") or {}
        return {"worker": worker, "op": op, "reply": {"ok": f"{op} sent"},
                "processes": len(pool.get("processes") or []), "max_concurrency": pool.get("max-concurrency")}

    def inspect(self, args: dict[str, Any]) -> dict[str, Any]:
        what = _str(args, "what")
        if what not in INSPECT:
            raise CommandError(f"unknown inspect {what!r}: use {', '.join(INSPECT)}")
        worker = args.get("worker")
        inspector = self.control.inspect(destination=[worker] if worker else None, timeout=REPLY_TIMEOUT)
        replies = getattr(inspector, what)() or {}
        if worker and not replies:
            raise CommandError(f"worker {worker} did not answer within {REPLY_TIMEOUT:.0f} s")
        return {"what": what, "replies": _plain(replies)}


class _FreshControl:
    """Control calls, each on a fresh ``Control`` and a new connection."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            from celery.app.control import Control

            with self._app.connection_for_write() as conn:
                return getattr(Control(app=self._app), name)(*args, connection=conn, **kwargs)
        return call

    def inspect(self, **options: Any) -> Any:
        app = self._app

        class _Inspect:
            def __getattr__(self, name: str) -> Any:
                def call(*args: Any, **kwargs: Any) -> Any:
                    from celery.app.control import Control

                    with app.connection_for_write() as conn:
                        inspector = Control(app=app).inspect(connection=conn, **options)
                        return getattr(inspector, name)(*args, **kwargs)
                return call

        return _Inspect()


def _secret(agent: Any) -> str:
    config = getattr(agent, "config", None) or agent.runtime.config
    return config.hmac_secret


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _one_reply(worker: str, op: str, replies: Any) -> Any:
    for reply in replies or []:
        if isinstance(reply, dict) and worker in reply:
            answer = reply[worker]
            if isinstance(answer, dict) and "error" in answer:
                raise CommandError(f"worker {worker} refused {op}: {answer['error']}")
            return _plain(answer)
    raise CommandError(f"worker {worker} did not answer {op} within {REPLY_TIMEOUT:.0f} s "
                       "(unknown name, or offline)")


def _headers(message: dict) -> dict:
    headers = message.get("headers")
    return headers if isinstance(headers, dict) else {}


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(f"{key} is required")
    return value


def _plain(value: Any) -> Any:
    """JSON-shaped (replies may hold tuples, sets, bytes)."""
    try:
        return json.loads(json.dumps(value, default=repr))
    except (TypeError, ValueError):
        return repr(value)
