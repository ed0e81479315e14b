"""The original Huey call, sealed into ``TaskEvent.replay`` for retries.

Huey's storage drops a message once a consumer takes it, and its result
store keeps no arguments, so the agent keeps the call itself: the message
exactly as Huey serializes it (``huey.serialize_task``: its own serializer,
pickle by default, compression included), sealed with the agent's replay key
(z4j_agents/replay.py). What is sealed::

    {"v": 1, "engine": "huey", "queue": "<huey.name>",
     "task": "proj.tasks.add", "id": "<task id>",
     "message": b"..."}          # name, args, kwargs, retries, pipeline, chord, expiry...

So a retry gets back the exact arguments (dates, Decimals, bytes, any object
the serializer keeps) while the API shows only redacted display copies.
"""

from __future__ import annotations

from typing import Any

from z4j_agents import replay

CALL_VERSION = 1


def pack_call(secret: str, huey: Any, task: Any, name: str, message: bytes | None = None) -> bytes:
    """The sealed call of ``task``: ``message`` as dequeued, else serialized
    now (raises what serializing raises)."""
    if message is None:
        message = huey.serialize_task(task)
    return replay.seal(secret, {"v": CALL_VERSION, "engine": "huey", "queue": huey.name, "task": name,
                                "id": str(task.id), "message": bytes(message)})


def open_call(secret: str, blob: bytes) -> dict[str, Any]:
    """The sealed dict; :class:`z4j_agents.replay.ReplayError` when it cannot be opened."""
    call = replay.open(secret, blob)
    if not isinstance(call, dict) or call.get("engine") != "huey" or call.get("v") != CALL_VERSION:
        raise replay.ReplayError("not a sealed Huey call of a version this agent knows")
    if not isinstance(call.get("message"), bytes):
        raise replay.ReplayError("the sealed Huey call holds no message")
    return call
