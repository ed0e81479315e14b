"""The original taskiq call, sealed into ``TaskEvent.replay`` for retries.

What is sealed (a dict, see :mod:`z4j_agents.replay`)::

    {"v": 1, "engine": "taskiq", "task": "proj:add", "id": "<task id>", "queue": "taskiq",
     "labels": {...}, "labels_types": {...} | None,
     "args": [...], "kwargs": {...}}          # msgpack-able calls (the usual JSON messages)
    {..., "wire": b"..."}                     # otherwise: the message as the broker's formatter writes it

On the producer side (``pre_send``) labels are still in their wire form
(strings plus ``labels_types``); on the worker side (``pre_execute``) they
are already parsed and ``labels_types`` is None. :func:`open_call` gives
back parsed labels, args and kwargs either way, ready for ``AsyncKicker``.
"""

from __future__ import annotations

from typing import Any

from z4j_agents import replay

CALL_VERSION = 1


def seal_message(secret: str, message: Any, formatter: Any, *, parsed_labels: bool,
                 queue: str | None = None) -> bytes | None:
    """The sealed call of a ``TaskiqMessage`` (sent to ``queue``); None when it cannot be sealed."""
    base = {"v": CALL_VERSION, "engine": "taskiq", "task": message.task_name, "id": message.task_id,
            "queue": queue}
    try:
        return replay.seal(secret, {**base, "labels": message.labels,
                                    "labels_types": None if parsed_labels else message.labels_types,
                                    "args": message.args, "kwargs": message.kwargs})
    except (TypeError, ValueError, OverflowError):
        pass  # an argument msgpack cannot hold: keep the message as the broker would send it
    try:
        wire = formatter.dumps(message).message
    except Exception:  # noqa: BLE001 - the message cannot be written at all: no replay
        return None
    return replay.seal(secret, {**base, "wire": bytes(wire), "parsed": parsed_labels})


def open_call(secret: str, blob: bytes, formatter: Any) -> dict[str, Any]:
    """``{task, id, queue, labels, args, kwargs}`` with parsed labels; ReplayError when it cannot be opened."""
    from taskiq.message import TaskiqMessage

    call = replay.open(secret, blob)
    if not isinstance(call, dict) or call.get("engine") != "taskiq" or call.get("v") != CALL_VERSION:
        raise replay.ReplayError("not a sealed taskiq call of a version this agent knows")
    try:
        if "wire" in call:
            message = formatter.loads(call["wire"])
            if not call.get("parsed"):
                message.parse_labels()
        else:
            message = TaskiqMessage(task_id=call["id"], task_name=call["task"], labels=dict(call["labels"] or {}),
                                    labels_types=call.get("labels_types"), args=list(call["args"] or ()),
                                    kwargs=dict(call["kwargs"] or {}))
            message.parse_labels()
    except replay.ReplayError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise replay.ReplayError(f"sealed taskiq call cannot be read: {type(exc).__name__}: {exc}") from None
    return {"task": message.task_name, "id": message.task_id, "queue": call.get("queue"),
            "labels": dict(message.labels),
            "args": list(message.args), "kwargs": dict(message.kwargs)}
