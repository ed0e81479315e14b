"""``huey.probe {task_ids: [...]}``: what Huey's result store knows.

The collector's reconciler (z4j_collector/services/reconciler.py) asks this
for tasks stuck in started whose consumer went away. Huey keeps a result per
task id (peeked here, never consumed): a value means ``success``
(engine_state COMPLETE, the result redacted), an error record means
``failure`` (ERROR, with Huey's error text and full traceback), or ``retry``
while the record says retries were left. No record is ``unknown``: Huey
stores nothing for a task that never finished, for ``None`` results unless
``store_none=True``, for periodic tasks, or when ``results=False``.
"""

from __future__ import annotations

import logging
from typing import Any

from z4j_agents.runtime import CommandError

log = logging.getLogger("huey.z4j")

MAX_IDS = 5000


def register(agent: Any) -> None:
    agent.on_command("huey.probe", lambda args: probe(agent, args))


def probe(agent: Any, args: dict[str, Any]) -> dict[str, Any]:
    ids = args.get("task_ids") if isinstance(args, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids):
        raise CommandError("task_ids must be a list of task ids")
    if len(ids) > MAX_IDS:
        raise CommandError(f"at most {MAX_IDS} task ids per probe, got {len(ids)}")
    huey = agent.store
    if not huey.results:
        return {"tasks": {i: {"state": "unknown", "engine_state": "NO_RESULT"} for i in ids}, "backend": None}
    redactor = agent.runtime.redactor
    out: dict[str, Any] = {}
    for task_id in ids:
        try:
            out[task_id] = _one(huey, redactor, task_id)
        except Exception as exc:  # noqa: BLE001 - one lookup's trouble is that task's answer
            out[task_id] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"tasks": out, "backend": type(huey.storage).__name__}


def _one(huey: Any, redactor: Any, task_id: str) -> dict[str, Any]:
    from huey.constants import EmptyData
    from huey.utils import Error

    raw = huey.storage.peek_data(task_id)
    if raw is EmptyData:
        return {"state": "unknown", "engine_state": "NO_RESULT"}
    value = huey.serializer.deserialize(raw)
    if isinstance(value, Error):
        meta = value.metadata if isinstance(value.metadata, dict) else {"error": str(value.metadata)}
        answer = {"state": "retry" if meta.get("retries") else "failure", "engine_state": "ERROR"}
        if meta.get("error") is not None:
            answer["exception"] = str(redactor.redact(str(meta["error"]))[0])[:4000]
        if meta.get("traceback"):
            answer["traceback"] = str(redactor.redact(str(meta["traceback"]))[0])
        return answer
    return {"state": "success", "engine_state": "COMPLETE", "result": redactor.redact(value)[0]}
