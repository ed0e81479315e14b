"""Dramatiq actions: the commands a Dramatiq agent runs for the collector.

* ``dramatiq.retry {task_id, replay}``: opens the message the agent sealed
  (z4j_agents/replay.py) and enqueues it again under a new message id, with
  the same actor, arguments, queue and options (a pipeline step keeps the
  steps after it); ``retries`` starts again at 0 and the message carries
  ``z4j_retry_of``. Never from the redacted display copies.
* ``dramatiq.cancel {task_id, terminate, queue?}``: a waiting message is
  taken out of its Redis queue; a message a worker holds goes through
  dramatiq-abort (``abort``: cancel mode, or abort mode to interrupt a running
  one); without dramatiq-abort's middleware on the broker, one clear line.
* ``dramatiq.purge {queue, name?, older_than_s?, dead_letters?}``: the queue
  and its delay queue (and its dead letters when asked), or only the waiting
  messages of an actor or older than an age (Redis).
* ``dramatiq.requeue_dead {queue, all, task_ids?}``: dead letters back from
  the Redis XQ, each exactly once (redisq.requeue_dead).
* ``dramatiq.probe`` (probe.py) and ``dramatiq.schedules.*`` (schedules.py).

Handlers run on the agent's command threads, never in a worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.dramatiq import redisq
from z4j_agents.dramatiq.middleware import ENGINE, RETRY_OF, _q
from z4j_agents.runtime import CommandError
from z4j_agents.sealed_call import open_from_command

log = logging.getLogger("z4j.dramatiq.actions")

_DROPPED_OPTIONS = ("eta", "retries", "traceback", "requeue_timestamp", "redis_message_id", "z4j_retry_of")
"""A retry runs now, as a first attempt."""


def register(agent: Any, middleware: Any) -> None:
    """Declare the Dramatiq actions on ``agent`` (before it starts)."""
    from z4j_agents.dramatiq import probe, schedules

    actions = DramatiqActions(agent)
    runtime = agent.runtime
    runtime.on_command("dramatiq.retry", actions.retry)
    runtime.on_command("dramatiq.cancel", actions.cancel)
    runtime.on_command("dramatiq.purge", actions.purge)
    runtime.on_command("dramatiq.requeue_dead", actions.requeue_dead)
    probe.register(agent)
    schedules.register(agent)


class DramatiqActions:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.broker = agent.broker

    # ------------------------------------------------------------ retry

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        from z4j_agents.dramatiq.call import open_call

        old_id = _text(args, "task_id")
        call = open_from_command(args, old_id, lambda blob: open_call(self.agent.config.hmac_secret, blob),
                                 what="message")
        message = call["message"]
        queue = _q(call.get("queue") or message.queue_name)
        options = {k: v for k, v in message.options.items() if k not in _DROPPED_OPTIONS}
        options[RETRY_OF] = old_id
        new = dataclasses.replace(message, queue_name=queue, options=options, message_id=str(uuid.uuid4()),
                                  message_timestamp=int(time.time() * 1000))
        self.broker.enqueue(new)  # the middleware records it as sent, with retry_of
        log.info("z4j dramatiq: retried %s as %s (%s)", old_id, new.message_id, new.actor_name)
        return {"new_task_id": new.message_id, "retry_of": old_id, "name": new.actor_name, "queue": queue}

    # ------------------------------------------------------------ cancel

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        task_id = _text(args, "task_id")
        terminate = bool(args.get("terminate"))
        queue = args.get("queue")
        removed = False
        if not terminate and isinstance(queue, str) and queue and redisq.is_redis(self.broker):
            removed = redisq.remove_waiting(self.broker, _q(queue), task_id)
        if removed:
            self.agent.emit(p.TaskEvent(id=p.new_id(), task_id=task_id, engine=ENGINE, kind="revoked",
                                        ts=time.time(), engine_state="CANCELLED",
                                        extra={"removed_from_queue": True}))
            return {"task_id": task_id, "terminate": False, "removed_from_queue": 1, "aborted": False}
        abortable = self._abortable()
        if abortable is None:
            where = "is not waiting in its queue (a worker holds it)" if not terminate else "is running"
            raise CommandError(f"message {task_id} {where}; stopping it needs dramatiq-abort's Abortable middleware "
                               "on the broker, which this one does not have; nothing changed")
        from dramatiq_abort import abort
        from dramatiq_abort.middleware import AbortMode

        abort(task_id, middleware=abortable, mode=AbortMode.ABORT if terminate else AbortMode.CANCEL)
        return {"task_id": task_id, "terminate": terminate, "removed_from_queue": 0, "aborted": True,
                "mode": "abort" if terminate else "cancel"}

    def _abortable(self) -> Any:
        try:
            from dramatiq_abort import Abortable
        except ImportError:
            return None
        return next((m for m in self.broker.middleware if isinstance(m, Abortable)), None)

    # ------------------------------------------------------------ purge

    def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = _q(_text(args, "queue"))
        name = args.get("name")
        older_than = args.get("older_than_s")
        dead_letters = bool(args.get("dead_letters"))
        if not redisq.is_redis(self.broker):
            if name is not None or older_than is not None or not dead_letters:
                raise CommandError(f"on {type(self.broker).__name__}, Dramatiq's flush empties the queue, its delay "
                                   "queue and its dead letters together: only a whole purge with dead_letters=true "
                                   "is possible")
            self.broker.flush(queue)
            return {"queue": queue, "purged": None, "dead_letters": None}
        if name is None and older_than is None:
            counts = redisq.purge(self.broker, queue, dead_letters)
            log.warning("z4j dramatiq: purged queue %s: %s", queue, counts)
            return {"queue": queue, **counts}
        if dead_letters:
            raise CommandError("dead_letters purges a whole queue's dead letters; it cannot be combined with "
                               "name or older_than")
        cutoff_ms = (time.time() - float(older_than)) * 1000 if older_than is not None else None

        def match(message: Any) -> bool:
            if name is not None and message.actor_name != name:
                return False
            return cutoff_ms is None or message.message_timestamp < cutoff_ms

        purged, scanned = redisq.purge_matching(self.broker, queue, match)
        log.warning("z4j dramatiq: purged %d of %d message(s) of queue %s (name=%s older_than_s=%s)",
                    purged, scanned, queue, name, older_than)
        return {"queue": queue, "purged": purged, "scanned": scanned}

    # ------------------------------------------------------------ dead letters

    def requeue_dead(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = _q(_text(args, "queue"))
        ids = args.get("task_ids")
        every = bool(args.get("all"))
        if every == bool(ids):
            raise CommandError("give task_ids (the dead letters to requeue) or all=true, not both")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids)):
            raise CommandError("task_ids must be a list of message ids")
        if not redisq.is_redis(self.broker):
            raise CommandError(f"dead letters are requeued from the Redis broker's XQ; this broker is "
                               f"{type(self.broker).__name__}")
        done, missing = redisq.requeue_dead(self.broker, queue, None if every else list(ids))
        now = time.time()
        for message in done:
            self.agent.emit(p.TaskEvent(id=p.new_id(), task_id=message.message_id, engine=ENGINE, kind="sent",
                                        ts=now, engine_state="REQUEUED", name=message.actor_name, queue=queue,
                                        retries=0, extra={"requeued_from": f"{queue}.XQ"}))
        log.warning("z4j dramatiq: requeued %d dead letter(s) of %s", len(done), queue)
        out: dict[str, Any] = {"queue": queue, "requeued": len(done)}
        if missing:
            out["missing"] = missing
        return out


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key) if isinstance(args, dict) else None
    if not isinstance(value, str) or not value:
        raise CommandError(f"{key} is required")
    return value
