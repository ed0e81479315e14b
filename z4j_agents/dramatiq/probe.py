"""``dramatiq.probe {task_ids: [...]}``: what Dramatiq's own stores know of stuck messages.

The collector's reconciler asks this for messages left ``started`` by a worker
that went away. For each id, in this order:

1. the results backend (when the broker has the Results middleware): a
   stored result is ``success`` (with the result, redacted), a stored
   exception is ``failure``. Result keys are made of queue, actor and message
   id, so each declared actor is tried (at most ``MAX_LOOKUPS`` lookups);
2. the Redis broker's keys: in the XQ -> ``failure`` (``DEAD_LETTERED``, with
   the traceback Retries stored in the message); in the delay queue ->
   ``retry`` (a retry is on its way: left open); waiting in the queue ->
   ``pending``; fetched by a worker and never acked -> ``started`` (Dramatiq
   gives it to another worker once the holder's heartbeat is 60 s old);
3. otherwise ``unknown``.

``pending``, ``started`` and ``unknown`` close the task ``lost`` when its
worker is gone; a later real event (the redelivered message's run) replaces it.
"""

from __future__ import annotations

import logging
from typing import Any

from z4j_agents.dramatiq import redisq
from z4j_agents.runtime import CommandError

log = logging.getLogger("z4j.dramatiq.probe")

MAX_IDS = 5000
MAX_LOOKUPS = 20_000


def register(agent: Any) -> None:
    agent.runtime.on_command("dramatiq.probe", lambda args: probe(agent, args))


def _backend(broker: Any) -> Any:
    try:
        return broker.get_results_backend()
    except RuntimeError:
        return None


def probe(agent: Any, args: dict[str, Any]) -> dict[str, Any]:
    ids = args.get("task_ids") if isinstance(args, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids):
        raise CommandError("task_ids must be a list of task ids")
    if len(ids) > MAX_IDS:
        raise CommandError(f"at most {MAX_IDS} task ids per probe, got {len(ids)}")
    broker = agent.broker
    redactor = agent.runtime.redactor
    out: dict[str, Any] = {}
    backend = _backend(broker)
    if backend is not None:
        actors = [(a.actor_name, a.queue_name) for a in list(broker.actors.values())]
        if len(ids) * len(actors) <= MAX_LOOKUPS:
            for task_id in ids:
                try:
                    answer = _from_backend(backend, actors, task_id, redactor)
                except Exception as exc:  # noqa: BLE001 - one lookup's trouble is that task's answer
                    answer = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                if answer is not None:
                    out[task_id] = answer
    rest = {i for i in ids if i not in out}
    if rest and redisq.is_redis(broker):
        try:
            out.update(_from_broker(agent, rest, redactor))
        except Exception as exc:  # noqa: BLE001
            for task_id in rest:
                out[task_id] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    for task_id in ids:
        out.setdefault(task_id, {"state": "unknown", "engine_state": "UNKNOWN"})
    return {"tasks": out, "backend": type(backend).__name__ if backend is not None else None,
            "broker": type(broker).__name__}


def _from_backend(backend: Any, actors: list[tuple[str, str]], task_id: str, redactor: Any) -> dict[str, Any] | None:
    from dramatiq import Message
    from dramatiq.results import ResultFailure, ResultMissing

    for actor, queue in actors:
        message = Message(queue_name=queue, actor_name=actor, args=(), kwargs={}, options={}, message_id=task_id)
        try:
            result = backend.get_result(message, block=False)
        except ResultMissing:
            continue
        except ResultFailure as exc:
            text = f"{exc.orig_exc_type}: {exc.orig_exc_msg}" if exc.orig_exc_msg else str(exc.orig_exc_type)
            return {"state": "failure", "engine_state": "FAILURE", "exception": redactor.redact_text(text, actor)[0]}
        return {"state": "success", "engine_state": "SUCCESS", "result": redactor.redact(result, actor)[0]}
    return None


def _from_broker(agent: Any, ids: set[str], redactor: Any) -> dict[str, Any]:
    broker = agent.broker
    out: dict[str, Any] = {}
    for queue in agent.queue_names():
        if not ids:
            break
        for rid, message in redisq.find(broker, f"{queue}.XQ.msgs", ids).values():
            traceback = message.options.get("traceback")
            answer: dict[str, Any] = {"state": "failure", "engine_state": "DEAD_LETTERED"}
            if isinstance(traceback, str) and traceback:
                answer["traceback"] = redactor.redact_text(traceback, message.actor_name)[0]
                answer["exception"] = redactor.redact_text(traceback.rstrip().splitlines()[-1],
                                                           message.actor_name)[0][:4000]
            out[message.message_id] = answer
        ids -= out.keys()
        for rid, message in redisq.find(broker, f"{queue}.DQ.msgs", ids).values():
            out[message.message_id] = {"state": "retry", "engine_state": "DELAYED"}
        ids -= out.keys()
        for rid, message in redisq.find(broker, f"{queue}.msgs", ids).values():
            waiting = redisq.is_waiting(broker, queue, rid)
            out[message.message_id] = ({"state": "pending", "engine_state": "ENQUEUED"} if waiting
                                       else {"state": "started", "engine_state": "FETCHED"})
        ids -= out.keys()
    return out
