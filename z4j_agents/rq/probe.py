"""``rq.probe {task_ids: [...]}``: what RQ's own store knows of jobs.

The collector's reconciler asks this for jobs stuck in ``started`` whose
worker went away. Each id is looked up in one pipelined read of the job
hashes; the job's own status decides:

=============================  ============  ===================================
RQ status                      z4j state     also answered
=============================  ============  ===================================
(no hash: never known/expired) ``unknown``
queued, deferred, scheduled,   ``pending``
ready_to_enqueue, rate_limited
started                        ``started``   ``worker`` (RQ's worker_name), and
                                             ``worker_alive`` from RQ's worker key
finished                       ``success``   result, ``date_done``
failed                         ``failure``   exception, traceback, ``date_done``
stopped, canceled              ``revoked``   ``date_done``
=============================  ============  ===================================

A job still ``started`` whose worker is gone stays ``started`` in RQ until
its StartedJobRegistry entry expires: the reconciler then closes it ``lost``
(the worker is gone and RQ knows nothing more). A lookup that fails answers
``{"error": ...}`` for that job, which is looked at again later.
"""

from __future__ import annotations

from typing import Any

from z4j_agents.rq.capture import ts
from z4j_agents.runtime import CommandError

MAX_IDS = 5000
STATES = {
    "queued": "pending", "deferred": "pending", "scheduled": "pending", "ready_to_enqueue": "pending",
    "rate_limited": "pending", "created": "pending", "started": "started", "finished": "success",
    "failed": "failure", "stopped": "revoked", "canceled": "revoked",
}


def register(agent: Any) -> None:
    agent.on_command("rq.probe", lambda args: probe(agent, args))


def probe(agent: Any, args: dict[str, Any]) -> dict[str, Any]:
    ids = args.get("task_ids") if isinstance(args, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids):
        raise CommandError("task_ids must be a list of job ids")
    if len(ids) > MAX_IDS:
        raise CommandError(f"at most {MAX_IDS} job ids per probe, got {len(ids)}")
    from rq.job import Job

    worker = agent.worker
    job_class = worker.job_class if worker is not None else Job
    serializer = worker.serializer if worker is not None else None
    jobs = job_class.fetch_many(ids, connection=agent.connection, serializer=serializer)
    redactor = agent.runtime.redactor
    out: dict[str, Any] = {}
    for job_id, job in zip(ids, jobs):
        try:
            out[job_id] = _one(agent, redactor, job)
        except Exception as exc:  # noqa: BLE001 - one lookup's trouble is that job's answer
            out[job_id] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"tasks": out, "backend": "rq"}


def _one(agent: Any, redactor: Any, job: Any) -> dict[str, Any]:
    if job is None:
        return {"state": "unknown", "engine_state": "missing"}
    raw = job.get_status(refresh=False)
    engine_state = str(getattr(raw, "value", raw) or "unknown")
    answer: dict[str, Any] = {"state": STATES.get(engine_state, "unknown"), "engine_state": engine_state}
    if engine_state == "started":
        name = job.worker_name
        answer["worker"] = name
        if name:
            from rq.worker import Worker

            answer["worker_alive"] = bool(agent.connection.exists(f"{Worker.redis_worker_namespace_prefix}{name}"))
        return answer
    if answer["state"] in ("pending", "unknown"):
        return answer
    done = ts(job.ended_at)
    if done is not None:
        answer["date_done"] = done
    name = job.func_name
    if engine_state == "finished":
        answer["result"] = redactor.redact(job.return_value(), name)[0]
    elif engine_state == "failed":
        result = job.latest_result()
        text = getattr(result, "exc_string", None) or ""
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if lines:
            answer["exception"] = str(redactor.redact(lines[-1].strip(), name)[0])[:4000]
        if text.lstrip().startswith("Traceback"):
            answer["traceback"] = str(redactor.redact(text, name)[0])
    return answer
