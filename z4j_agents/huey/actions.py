"""Huey actions: the commands a consumer's agent runs for the collector.

* ``huey.retry {task_id, replay}``: opens the call the agent sealed
  (capture.py: at enqueue in producers, at execution in the consumer; only
  this agent's secret opens it) and enqueues it again under a new id, with
  the same arguments and options, pipeline steps after it included (new ids
  too). The retry budget is the task's own again, any ETA or expiry of the
  old run is dropped, and a chord member is retried alone (its chord has
  already counted it). Never from the redacted display copies.
* ``huey.cancel {task_id, terminate}``: ``revoke_by_id`` (once): the consumer
  skips the task when it comes to it. Huey cannot stop a running task, so
  ``terminate`` is refused.
* ``huey.purge {queue, name?}``: the whole queue, or only one task name's
  messages (Redis and SQLite storages). Huey's messages carry no enqueue
  time and Huey has no dead-letter store: those filters are refused.

Handlers run on the agent's command threads, never in a task; a refusal is a
``CommandError`` with one line the operator reads.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.huey.capture import ENGINE
from z4j_agents.runtime import CommandError
from z4j_agents.sealed_call import open_from_command

log = logging.getLogger("huey.z4j")


def register(agent: Any) -> None:
    actions = HueyActions(agent)
    agent.on_command("huey.retry", actions.retry)
    agent.on_command("huey.cancel", actions.cancel)
    agent.on_command("huey.purge", actions.purge)


class HueyActions:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    @property
    def huey(self) -> Any:
        return self.agent.store

    # ------------------------------------------------------------ retry

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        from z4j_agents.huey.call import open_call

        old_id = _str(args, "task_id")
        call = open_from_command(args, old_id, lambda blob: open_call(self.agent.config.hmac_secret, blob))
        huey = self.huey
        if call.get("queue") != huey.name:
            raise CommandError(f"the sealed call of {old_id} is for Huey {call.get('queue')!r}, this consumer runs "
                               f"{huey.name!r}; nothing was enqueued")
        try:
            task = huey.deserialize_task(call["message"])
        except Exception as exc:  # noqa: BLE001 - a task this consumer does not know, an unreadable message
            raise CommandError(f"cannot rebuild the call of {old_id} ({call.get('task')}): {type(exc).__name__}: "
                               f"{exc}; nothing was enqueued") from None
        _fresh(task)
        tls = self.agent.binding._tls
        tls.retry_of = old_id
        try:
            huey.enqueue(task)
        finally:
            tls.retry_of = None
        name = self.agent.binding.name_of(task)
        log.info("z4j huey: retried %s as %s (%s)", old_id, task.id, name)
        return {"new_task_id": task.id, "retry_of": old_id, "name": name, "queue": huey.name}

    # ------------------------------------------------------------ cancel

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        task_id = _str(args, "task_id")
        if args.get("terminate"):
            raise CommandError("Huey cannot stop a running task (revoking only skips a task that has not started); "
                               "nothing was changed")
        queue = args.get("queue")
        if isinstance(queue, str) and queue and queue != self.huey.name:
            raise CommandError(f"task {task_id} is on Huey {queue!r}, this consumer runs {self.huey.name!r}; "
                               "nothing was changed")
        self.huey.revoke_by_id(task_id, revoke_once=True)
        # The consumer says REVOKED when it comes to the task; say it now, as
        # Celery's cancel does for a queued task.
        self.agent.runtime.emit(p.TaskEvent(id=p.new_id(), task_id=task_id, engine=ENGINE, kind="revoked",
                                            ts=time.time(), engine_state="REVOKED", queue=self.huey.name,
                                            extra={"revoked_by": "z4j"}))
        return {"task_id": task_id, "terminate": False, "revoked": True}

    # ------------------------------------------------------------ purge

    def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = _str(args, "queue")
        huey = self.huey
        if queue != huey.name:
            raise CommandError(f"this consumer's Huey queue is {huey.name!r}, not {queue!r}; nothing was purged")
        if args.get("dead_letters"):
            raise CommandError("Huey has no dead-letter store; nothing was purged")
        if args.get("older_than_s") is not None:
            raise CommandError("Huey's queued messages carry no enqueue time, so a purge by age cannot be done; "
                               "nothing was purged")
        name = args.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise CommandError("name must be a task name")
        storage = huey.storage
        if name is None:
            purged = _flush(storage)
            log.warning("z4j huey: purged %d message(s) of queue %s", purged, queue)
            return {"queue": queue, "purged": purged, "scheduled_kept": int(storage.schedule_size())}
        purged, scanned = _remove(huey, lambda task: self.agent.binding.name_of(task) == name)
        log.warning("z4j huey: purged %d of %d message(s) of queue %s (name=%s)", purged, scanned, queue, name)
        return {"queue": queue, "purged": purged, "scanned": scanned}


def _fresh(task: Any) -> None:
    """New ids along the pipeline, a fresh retry budget, no old ETA, expiry or chord."""
    node = task
    while node is not None:
        node.id = str(uuid.uuid4())
        node.revoke_id = f"r:{node.id}"
        node.eta = None
        node.expires_resolved = None
        node.chord_config = None
        node.retries = getattr(type(node), "default_retries", 0) or 0
        if node.on_error is not None:
            node.on_error.id = str(uuid.uuid4())
            node.on_error.revoke_id = f"r:{node.on_error.id}"
        node = node.on_complete


def _flush(storage: Any) -> int:
    """Empty the queue; how many messages it held (exact on Redis and SQLite)."""
    from huey.storage import RedisPriorityQueue, RedisStorage, SqliteStorage

    if isinstance(storage, RedisStorage):
        size = "zcard" if isinstance(storage, RedisPriorityQueue) else "llen"
        with storage.conn.pipeline(transaction=True) as pipe:
            getattr(pipe, size)(storage.queue_key)
            pipe.delete(storage.queue_key)
            count, _ = pipe.execute()
        return int(count)
    if isinstance(storage, SqliteStorage):
        with storage.db(commit=True) as cursor:
            cursor.execute("delete from task where queue = ?", (storage.name,))
            return int(cursor.rowcount)
    count = int(storage.queue_size())  # other storages: counted, then flushed
    storage.flush_queue()
    return count


def _remove(huey: Any, match: Any) -> tuple[int, int]:
    """Take the queued messages ``match`` accepts out of the queue, each by its
    exact stored value (Redis) or row (SQLite), so a message a worker took
    meanwhile, or one enqueued meanwhile, is never removed by mistake."""
    from huey.storage import RedisPriorityQueue, RedisStorage, SqliteStorage

    storage = huey.storage
    removed = scanned = 0
    if isinstance(storage, RedisStorage):
        priority = isinstance(storage, RedisPriorityQueue)
        raw = storage.conn.zrange(storage.queue_key, 0, -1) if priority else storage.conn.lrange(
            storage.queue_key, 0, -1)
        matches = []
        for item in raw:
            scanned += 1
            if _matches(huey, item[8:] if priority else item, match):
                matches.append(item)
        for start in range(0, len(matches), 500):
            with storage.conn.pipeline() as pipe:
                for item in matches[start:start + 500]:
                    pipe.zrem(storage.queue_key, item) if priority else pipe.lrem(storage.queue_key, 1, item)
                removed += sum(pipe.execute())
        return removed, scanned
    if isinstance(storage, SqliteStorage):
        rows = storage.sql("select id, data from task where queue = ?", (storage.name,), results=True)
        ids = []
        for row_id, data in rows:
            scanned += 1
            if _matches(huey, bytes(data), match):
                ids.append(row_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            with storage.db(commit=True) as cursor:
                cursor.execute(f"delete from task where id in ({', '.join('?' for _ in chunk)})", chunk)
                removed += int(cursor.rowcount)
        return removed, scanned
    raise CommandError(f"purging by task name needs the Redis or SQLite storage; this consumer uses "
                       f"{type(storage).__name__}; nothing was purged")


def _matches(huey: Any, data: bytes, match: Any) -> bool:
    try:
        return bool(match(huey.deserialize_task(data)))
    except Exception:  # noqa: BLE001 - a message this consumer cannot read is kept
        return False


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(f"{key} is required")
    return value
