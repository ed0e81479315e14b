"""The original Dramatiq message, sealed into ``TaskEvent.replay`` for retries.

What is sealed (a dict, see :mod:`z4j_agents.replay`)::

    {"v": 1, "engine": "dramatiq", "id": "<message id>", "actor": "send_email",
     "queue": "default",                 # the canonical queue (never its .DQ)
     "message": b"..."}                  # the message exactly as Dramatiq encodes it

``message`` is ``Message.encode()`` with the process's Dramatiq encoder (JSON
by default; a pickle encoder keeps datetimes, Decimals and objects as they
were), so a retry decodes the very call that was sent: arguments, options
(``pipe_target`` included, so a pipeline step re-runs with its remaining
steps) and all. The redacted display copies are never used.
"""

from __future__ import annotations

from typing import Any

from z4j_agents import replay

CALL_VERSION = 1


def encode(message: Any) -> bytes:
    """``message.encode()``, byte for byte, without ``dataclasses.asdict`` (a third of the hook's cost)."""
    from dramatiq.message import get_encoder

    return get_encoder().encode({
        "queue_name": message.queue_name, "actor_name": message.actor_name, "args": message.args,
        "kwargs": message.kwargs, "options": message.options, "message_id": message.message_id,
        "message_timestamp": message.message_timestamp})


def seal_message(secret: str, message: Any, queue: str) -> bytes:
    return replay.seal(secret, {"v": CALL_VERSION, "engine": "dramatiq", "id": message.message_id,
                                "actor": message.actor_name, "queue": queue, "message": encode(message)})


def open_call(secret: str, blob: bytes) -> dict[str, Any]:
    """The sealed call, with ``message`` decoded to a ``dramatiq.Message``.
    Raises :class:`z4j_agents.replay.ReplayError` when it cannot be opened."""
    from dramatiq import Message

    call = replay.open(secret, blob)
    if not isinstance(call, dict) or call.get("engine") != "dramatiq" or call.get("v") != CALL_VERSION:
        raise replay.ReplayError("not a sealed Dramatiq call of a version this agent knows")
    data = call.get("message")
    if not isinstance(data, bytes):
        raise replay.ReplayError("the sealed Dramatiq call holds no message")
    call["message"] = Message.decode(data)
    return call
