"""``celery.probe {task_ids: [...]}``: what Celery's result backend knows.

The collector's reconciler (z4j_collector/services/reconciler.py) asks this
for tasks stuck in received/started whose worker went away. For each id the
answer is the backend's state mapped to z4j's (``unknown`` for PENDING, which
in Celery means "no record"), Celery's own name as ``engine_state``, and for a
finished task its result (redacted), exception text, traceback (redacted)
and ``date_done`` (seconds since the epoch). A task whose lookup fails gets
``{"error": ...}`` and is looked at again later.

Runs on the agent's command thread, never in a task. Without a result
backend every id is ``unknown``: the reconciler then relies on the worker
being gone.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from z4j_agents.runtime import CommandError

log = logging.getLogger("z4j.celery.probe")

MAX_IDS = 5000
STATES = {
    "PENDING": "unknown",
    "RECEIVED": "received",
    "STARTED": "started",
    "RETRY": "retry",
    "SUCCESS": "success",
    "FAILURE": "failure",
    "REVOKED": "revoked",
    "REJECTED": "rejected",
}


def register(agent: Any, app: Any) -> None:
    agent.runtime.on_command("celery.probe", lambda args: probe(agent, app, args))


def probe(agent: Any, app: Any, args: dict[str, Any]) -> dict[str, Any]:
    ids = args.get("task_ids") if isinstance(args, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids):
        raise CommandError("task_ids must be a list of task ids")
    if len(ids) > MAX_IDS:
        raise CommandError(f"at most {MAX_IDS} task ids per probe, got {len(ids)}")
    backend = getattr(app, "backend", None)
    if backend is None or type(backend).__name__ == "DisabledBackend":
        return {"tasks": {i: {"state": "unknown", "engine_state": "PENDING"} for i in ids}, "backend": None}
    redactor = agent.runtime.redactor
    out: dict[str, Any] = {}
    for task_id in ids:
        try:
            out[task_id] = _one(backend, redactor, task_id)
        except Exception as exc:  # noqa: BLE001 - one lookup's trouble is that task's answer
            out[task_id] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"tasks": out, "backend": type(backend).__name__}


def _one(backend: Any, redactor: Any, task_id: str) -> dict[str, Any]:
    meta = backend.get_task_meta(task_id)
    engine_state = str(meta.get("status") or "PENDING")
    answer: dict[str, Any] = {"state": STATES.get(engine_state, "unknown"), "engine_state": engine_state}
    if engine_state in ("PENDING", "RECEIVED", "STARTED"):
        return answer
    done = meta.get("date_done")
    if isinstance(done, str):
        try:
            done = datetime.fromisoformat(done)
        except ValueError:
            done = None
    if isinstance(done, datetime):
        answer["date_done"] = (done if done.tzinfo else done.replace(tzinfo=timezone.utc)).timestamp()
    result = meta.get("result")
    name = meta.get("name")
    if engine_state == "SUCCESS":
        answer["result"] = redactor.redact(result, name)[0]
    elif result is not None:
        text = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else str(result)
        answer["exception"] = str(redactor.redact(text, name)[0])[:4000]
    traceback = meta.get("traceback")
    if traceback:
        answer["traceback"] = str(redactor.redact(str(traceback), name)[0])
    return answer
