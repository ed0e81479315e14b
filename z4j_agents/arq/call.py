"""The original arq call, sealed into ``TaskEvent.replay`` for retries.

arq deletes a job's data when it finishes and its result after
``keep_result`` seconds, so a retry cannot count on Redis. The agent seals
the call when it sees it (the producer at ``enqueue_job``, the worker when
the job starts), with :mod:`z4j_agents.replay`::

    {"v": 1, "engine": "arq", "id": "<job id>", "function": "send_mail",
     "queue": "arq:queue",
     "job": b"..."}          # serialize_job(function, args, kwargs, ...) with
                             # the job serializer of the pool or worker that saw it

``job`` is arq's own encoding of the job (pickle unless the application set
``job_serializer``), made from the arguments as they were enqueued or as the
job received them: a retry gets back the same types (datetimes, Decimals,
dataclasses) and the real secrets, never the redacted display copy.
"""

from __future__ import annotations

from typing import Any

from arq.jobs import serialize_job

from z4j_agents import replay

CALL_VERSION = 1


def job_bytes(function: str, args: tuple, kwargs: dict, serializer: Any) -> bytes:
    """arq's own encoding of a call (what ``enqueue_job`` writes to ``arq:job:<id>``)."""
    return serialize_job(function, tuple(args), dict(kwargs), None, 0, serializer=serializer)


def seal_call(secret: str, *, job_id: str, function: str, queue: str | None, job: bytes) -> bytes:
    return replay.seal(secret, {"v": CALL_VERSION, "engine": "arq", "id": job_id, "function": function,
                                "queue": queue, "job": bytes(job)})


def open_call(secret: str, blob: bytes, deserializer: Any = None) -> dict[str, Any]:
    """The sealed call with ``args`` and ``kwargs`` decoded by ``deserializer``
    (arq's default, pickle, when None). Raises ReplayError when it cannot be
    opened or read."""
    from arq.jobs import SerializationError, deserialize_job_raw

    call = replay.open(secret, blob)
    if not isinstance(call, dict) or call.get("engine") != "arq" or call.get("v") != CALL_VERSION:
        raise replay.ReplayError("not a sealed arq call of a version this agent knows")
    if not isinstance(call.get("function"), str) or not isinstance(call.get("job"), bytes):
        raise replay.ReplayError("the sealed arq call has no function or job")
    try:
        function, args, kwargs, _, _ = deserialize_job_raw(call["job"], deserializer=deserializer)
    except SerializationError as exc:
        cause = exc.__cause__
        raise replay.ReplayError(f"the job serializer cannot read the sealed call: "
                                 f"{type(cause).__name__ if cause else 'error'}: {cause or exc}") from None
    call.update(args=tuple(args or ()), kwargs=dict(kwargs or {}), function=function)
    return call
