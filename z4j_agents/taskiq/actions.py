"""taskiq actions: the commands a taskiq agent runs for the collector.

* ``taskiq.retry {task_id, replay}``: opens the call this agent sealed
  (z4j_agents/replay.py) and kicks it again with ``AsyncKicker`` under a new
  id, with the same args, kwargs and labels (minus the retry count, delay
  and z4j's own labels) plus ``z4j_retry_of``; never the redacted display copy.
* ``taskiq.cancel {task_id, terminate, queue?}``: taskiq has no revoke.
  A queued task: its message is taken out of its Redis list (taskiq-redis
  ``ListQueueBroker``). A running ``async def`` task: its asyncio task is
  cancelled in the worker process that runs it (asked over Redis pub/sub when
  another process of the agent got the command); it ends ``revoked``. A
  running synchronous task cannot be stopped (it runs in a thread): refused.
* ``taskiq.purge {queue, name?, older_than_s?}``: deletes the Redis list, or
  removes the messages matching a task name or an age (``z4j_sent_at``).
* ``taskiq.probe {task_ids}``: what the result backend knows.

Handlers run on the agent's command threads; broker and backend I/O run as
coroutines on the host's loop (``agent.on_loop``), Redis scans on the
agent's own synchronous client. A refusal is a ``CommandError`` with one line.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.runtime import CommandError
from z4j_agents.sealed_call import open_from_command
from z4j_agents.taskiq import brokers
from z4j_agents.taskiq.agent import ENGINE, TaskiqAgent
from z4j_agents.taskiq.call import open_call

log = logging.getLogger("z4j.taskiq.actions")

SCAN_CHUNK = 1000
MAX_IDS = 5000
CANCEL_CHANNEL = "z4j:taskiq:cancel"
CANCEL_REPLY_S = 3.0
DROPPED_LABELS = ("_retries", "delay", "schedule_id", "z4j_sent_at", "z4j_retry_of")


def register(agent: TaskiqAgent, middleware: Any) -> None:
    """Declare the taskiq actions on ``agent`` (before it starts)."""
    actions = TaskiqActions(agent, middleware)
    runtime = agent.runtime
    runtime.on_command("taskiq.retry", actions.retry)
    runtime.on_command("taskiq.cancel", actions.cancel)
    runtime.on_command("taskiq.purge", actions.purge)
    runtime.on_command("taskiq.probe", actions.probe)
    agent.cancel_listener = actions.cancel_request


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key) if isinstance(args, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise CommandError(f"{key} must be a string of 1 to 255 characters")
    return value


class TaskiqActions:
    def __init__(self, agent: TaskiqAgent, middleware: Any) -> None:
        self.agent = agent
        self.middleware = middleware

    @property
    def broker(self) -> Any:
        return self.agent.broker

    def _client(self, what: str) -> Any:
        if brokers.kind(self.broker) != brokers.LIST:
            raise CommandError(f"cannot {what}: taskiq has no API for it, and z4j does it only on a taskiq-redis "
                               f"ListQueueBroker (this broker is {type(self.broker).__name__}); nothing changed")
        return brokers.sync_client(self.broker)

    # ------------------------------------------------------------ retry

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        old_id = _str(args, "task_id")
        call = open_from_command(args, old_id, lambda blob: open_call(self.agent.secret, blob, self.broker.formatter),
                                 outcome="nothing was kicked")
        name = call["task"]
        labels = {k: v for k, v in call["labels"].items() if k not in DROPPED_LABELS}
        labels["z4j_retry_of"] = old_id
        if call["queue"] and "queue_name" not in labels and call["queue"] != brokers.default_queue(self.broker):
            labels["queue_name"] = call["queue"]  # this process's broker may default to another queue
        new_id = str(self.broker.id_generator())

        async def kick() -> None:
            from taskiq.kicker import AsyncKicker

            await AsyncKicker(name, self.broker, labels).with_task_id(new_id).kiq(*call["args"], **call["kwargs"])

        self.agent.on_loop(kick, f"re-kick task {old_id}")
        log.info("z4j taskiq: retried %s as %s (%s)", old_id, new_id, name)
        return {"new_task_id": new_id, "retry_of": old_id, "name": name,
                "queue": brokers.queue_of(self.broker, labels)}

    # ------------------------------------------------------------ cancel

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        task_id = _str(args, "task_id")
        terminate = bool(args.get("terminate"))
        local = self.cancel_running(task_id)
        if local is not None:
            return local
        if terminate:
            return self._cancel_elsewhere(task_id)
        queue = args.get("queue") if isinstance(args.get("queue"), str) and args.get("queue") else None
        queue = queue or brokers.default_queue(self.broker)
        client = self._client(f"cancel queued task {task_id}")
        try:
            removed = _remove(client, queue, lambda raw: task_id.encode() in raw
                              and getattr(self._message(raw), "task_id", None) == task_id, limit=1)[0]
        finally:
            client.close()
        if not removed:
            raise CommandError(f"task {task_id} is not waiting in queue {queue!r} (a worker took it, or it is gone) "
                               "and no worker process of this agent runs it; taskiq has no revoke; nothing changed")
        self.agent.runtime.emit(p.TaskEvent(id=p.new_id(), task_id=task_id, engine=ENGINE, kind="revoked",
                                            ts=time.time(), engine_state="removed", queue=queue,
                                            extra={"removed_from_queue": True}))
        return {"task_id": task_id, "terminate": False, "removed_from_queue": removed, "queue": queue}

    def cancel_running(self, task_id: str) -> dict[str, Any] | None:
        """Cancel ``task_id`` if it runs in this process; None when it does not."""
        agent = self.agent
        entry = agent.running.get(task_id)
        if entry is None:
            return None
        _, atask, name = entry
        task = self.broker.find_task(name)
        func = getattr(task, "original_func", None)
        if atask is None or func is None or not inspect.iscoroutinefunction(func):
            raise CommandError(f"task {task_id} ({name}) is a synchronous function running in a worker thread: "
                               "Python cannot stop a thread and taskiq has no revoke, so it cannot be cancelled; "
                               "nothing changed")
        if agent.loop is None or agent.loop.is_closed():
            raise CommandError(f"cannot cancel task {task_id}: the worker's event loop is not running")
        agent.cancelling.add(task_id)
        agent.loop.call_soon_threadsafe(atask.cancel)
        log.warning("z4j taskiq: cancelled running task %s (%s)", task_id, name)
        return {"task_id": task_id, "terminate": True, "cancelled": "running", "worker": agent.worker}

    def _cancel_elsewhere(self, task_id: str) -> dict[str, Any]:
        """Ask the agent's other worker processes (over Redis pub/sub) to cancel a running task."""
        if brokers.kind(self.broker) not in (brokers.LIST, brokers.STREAM):
            raise CommandError(f"task {task_id} does not run in this worker process ({self.agent.worker}), and other "
                               "processes can be asked only through a taskiq-redis broker; nothing changed")
        client = brokers.sync_client(self.broker)
        reply_key = f"{CANCEL_CHANNEL}:reply:{uuid.uuid4().hex}"
        try:
            listeners = client.publish(CANCEL_CHANNEL, json.dumps({"task_id": task_id, "reply": reply_key}))
            answer = client.blpop([reply_key], timeout=CANCEL_REPLY_S) if listeners else None
        finally:
            client.close()
        if not answer:
            raise CommandError(f"no worker process running task {task_id} answered within {CANCEL_REPLY_S:.0f} s "
                               "(it finished, or its worker is gone); nothing changed")
        reply = json.loads(answer[1])
        if reply.get("error"):
            raise CommandError(reply["error"])
        return reply["result"]

    def cancel_request(self, data: bytes) -> None:
        """A cancel asked over pub/sub (monitor thread): answer only when the task runs here."""
        try:
            request = json.loads(data)
            task_id, reply_key = request["task_id"], request["reply"]
            if task_id not in self.agent.running:
                return
            try:
                answer: dict[str, Any] = {"result": self.cancel_running(task_id)}
            except CommandError as exc:
                answer = {"error": str(exc)}
            client = brokers.sync_client(self.broker)
            try:
                client.rpush(reply_key, json.dumps(answer))
                client.expire(reply_key, 30)
            finally:
                client.close()
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: could not answer a cancel request")

    def _message(self, raw: bytes) -> Any:
        try:
            return self.broker.formatter.loads(raw)
        except Exception:  # noqa: BLE001 - not a taskiq message: never matched
            return None

    # ------------------------------------------------------------ purge

    def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = _str(args, "queue")
        if args.get("dead_letters"):
            raise CommandError("taskiq keeps no dead letters (failed tasks are not stored by the broker); "
                               "nothing was purged")
        name = args.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise CommandError("name must be a task name")
        older = args.get("older_than_s")
        if older is not None and (isinstance(older, bool) or not isinstance(older, int | float) or older <= 0):
            raise CommandError("older_than_s must be a positive number of seconds")
        client = self._client(f"purge queue {queue!r}")
        try:
            if name is None and older is None:
                pipe = client.pipeline(transaction=True)
                pipe.llen(queue)
                pipe.delete(queue)
                purged = int(pipe.execute()[0])
                log.warning("z4j taskiq: purged %d message(s) of queue %s", purged, queue)
                return {"queue": queue, "purged": purged}
            cutoff = time.time() - float(older) if older is not None else None
            undated = 0

            def match(raw: bytes) -> bool:
                nonlocal undated
                if name is not None and name.encode() not in raw:
                    return False
                message = self._message(raw)
                if message is None or (name is not None and message.task_name != name):
                    return False
                if cutoff is None:
                    return True
                try:
                    sent = float(message.labels["z4j_sent_at"])
                except (KeyError, TypeError, ValueError):
                    undated += 1
                    return False
                return sent < cutoff

            purged, scanned = _remove(client, queue, match)
        finally:
            client.close()
        log.warning("z4j taskiq: purged %d of %d message(s) of queue %s", purged, scanned, queue)
        return {"queue": queue, "purged": purged, "scanned": scanned, "kept_undated": undated}

    # ------------------------------------------------------------ probe

    def probe(self, args: dict[str, Any]) -> dict[str, Any]:
        ids = args.get("task_ids") if isinstance(args, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids):
            raise CommandError("task_ids must be a list of task ids")
        if len(ids) > MAX_IDS:
            raise CommandError(f"at most {MAX_IDS} task ids per probe, got {len(ids)}")
        backend = self.broker.result_backend
        name = type(backend).__name__
        out: dict[str, Any] = {}
        for task_id in ids:
            if task_id in self.agent.running:
                out[task_id] = {"state": "started", "engine_state": "executing"}
        rest = [i for i in ids if i not in out]
        if name == "DummyResultBackend":
            out.update({i: {"state": "unknown", "engine_state": "no_result_backend"} for i in rest})
            return {"tasks": out, "backend": None}
        redactor = self.agent.runtime.redactor
        keep = getattr(backend, "keep_results", True) is not False

        async def look() -> dict[str, Any]:
            found: dict[str, Any] = {}
            for task_id in rest:
                try:
                    found[task_id] = await _one(backend, redactor, task_id, keep)
                except Exception as exc:  # noqa: BLE001 - one lookup's trouble is that task's answer
                    found[task_id] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            return found

        if rest:
            out.update(self.agent.on_loop(look, "read the result backend", timeout=15.0))
        return {"tasks": out, "backend": name}


async def _one(backend: Any, redactor: Any, task_id: str, keep: bool) -> dict[str, Any]:
    if not await backend.is_result_ready(task_id):
        return {"state": "unknown", "engine_state": "no_result"}
    if not keep:
        # Reading would delete it (keep_results=False): the owner's result is not ours to take.
        return {"state": "unknown", "engine_state": "result_unread"}
    result = await backend.get_result(task_id, with_logs=False)
    if not result.is_err:
        return {"state": "success", "engine_state": "success", "result": redactor.redact(result.return_value)[0]}
    error = result.error
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return {"state": "failure", "engine_state": "error", "exception": str(redactor.redact(text)[0])[:4000]}


def _remove(client: Any, key: str, match: Callable[[bytes], bool], limit: int | None = None) -> tuple[int, int]:
    """Remove the messages of Redis list ``key`` that ``match``, each by value
    (``LREM key 1 raw``): one a worker took meanwhile is simply not found.
    Reads the list once, in chunks. Returns (removed, scanned)."""
    removed = scanned = 0
    start = 0
    while True:
        chunk = client.lrange(key, start, start + SCAN_CHUNK - 1)
        if not chunk:
            break
        gone = 0
        for raw in chunk:
            scanned += 1
            if match(raw):
                gone += int(client.lrem(key, 1, raw))
                if limit is not None and removed + gone >= limit:
                    return removed + gone, scanned
        removed += gone
        start += len(chunk) - gone  # what we removed shifted the rest of the list
        if len(chunk) < SCAN_CHUNK:
            break
    return removed, scanned
