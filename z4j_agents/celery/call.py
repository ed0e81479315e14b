"""The original Celery call, sealed into ``TaskEvent.replay`` for retries.

What is sealed (a dict, see :mod:`z4j_agents.replay`)::

    {"v": 1, "engine": "celery",
     "task": "proj.add", "id": "<task id>",
     "body": b"...",                       # the message body exactly as serialized
     "content_type": "application/json", "content_encoding": "utf-8",
     "headers": {...},                     # the message headers (plain values), minus compression
     "exchange": "", "routing_key": "celery", "queue": "celery", "priority": None}

On the worker side the body is the received message's raw bytes (already
decompressed by kombu), so types the serializer knows (datetimes, UUIDs,
Decimals, bytes, pickled objects) come back exactly. On the publish side it
is the body serialized again with the task's serializer. For task protocol 2
it decodes to ``(args, kwargs, embed)``, ``embed`` holding the canvas
(``callbacks``, ``errbacks``, ``chain``, ``chord``).

:func:`open_call` opens and decodes it for a retry.
"""

from __future__ import annotations

from typing import Any

from z4j_agents import replay

CALL_VERSION = 1
_MAX_DEPTH = 8


def plain(obj: Any, depth: int = 0) -> Any:
    """Headers as plain msgpack values (str for anything else)."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if depth > _MAX_DEPTH:
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    return str(obj)


def pack_call(secret: str, *, task: str, task_id: str, body: bytes, content_type: str | None,
              content_encoding: str | None, headers: dict[str, Any] | None, exchange: str | None,
              routing_key: str | None, queue: str | None, priority: int | None) -> bytes:
    hdrs = plain({k: v for k, v in (headers or {}).items() if k != "compression"})
    return replay.seal(secret, {
        "v": CALL_VERSION, "engine": "celery", "task": task, "id": task_id,
        "body": bytes(body) if not isinstance(body, str) else body.encode(content_encoding or "utf-8"),
        "content_type": content_type, "content_encoding": content_encoding, "headers": hdrs,
        "exchange": exchange, "routing_key": routing_key, "queue": queue, "priority": priority,
    })


def open_call(secret: str, blob: bytes) -> dict[str, Any]:
    """The sealed call with the body decoded: adds ``args``, ``kwargs`` and
    ``embed`` (protocol 2; protocol 1 bodies give their dict's fields).
    Raises :class:`z4j_agents.replay.ReplayError` when it cannot be opened."""
    from kombu.serialization import loads

    call = replay.open(secret, blob)
    if not isinstance(call, dict) or call.get("engine") != "celery" or call.get("v") != CALL_VERSION:
        raise replay.ReplayError("not a sealed Celery call of a version this agent knows")
    ctype = call.get("content_type")
    decoded = loads(call["body"], ctype, call.get("content_encoding"), accept=[ctype] if ctype else None)
    if isinstance(decoded, (list, tuple)) and len(decoded) == 3:
        args, kwargs, embed = decoded
    elif isinstance(decoded, dict):  # task protocol 1
        args, kwargs = decoded.get("args", ()), decoded.get("kwargs", {})
        embed = {k: decoded.get(k) for k in ("callbacks", "errbacks", "chord", "chain") if decoded.get(k)}
    else:
        raise replay.ReplayError(f"sealed Celery body has an unknown shape: {type(decoded).__name__}")
    call.update(args=list(args or ()), kwargs=dict(kwargs or {}), embed=dict(embed or {}))
    return call
