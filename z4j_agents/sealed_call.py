"""The sealed call a retry command carries (``args["replay"]``: the bytes of
:mod:`z4j_agents.replay`, base64), opened by the engine's own ``open_call``.
Every way it can fail is one line to the operator that says nothing was
enqueued, the same wording for every engine."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from z4j_agents import replay
from z4j_agents.runtime import CommandError


def open_from_command(args: dict[str, Any], task_id: str, open_call: Callable[[bytes], Any], *,
                      what: str = "call", outcome: str = "nothing was enqueued") -> Any:
    """``open_call(blob)`` of the command's sealed ``what`` (call, message) of ``task_id``; a
    CommandError ending in ``outcome`` when it was not sent, cannot be opened or cannot be read."""
    blob = args.get("replay")
    if not isinstance(blob, str) or not blob:
        raise CommandError(f"the original {what} was not sent with the command; {outcome}")
    try:
        return open_call(base64.b64decode(blob, validate=True))
    except (replay.ReplayError, ValueError) as exc:
        raise CommandError(f"cannot open the sealed {what} of {task_id}: {exc}; {outcome}") from None
    except Exception as exc:  # noqa: BLE001 - a body this process's serializer cannot read
        raise CommandError(f"cannot read the sealed {what} of {task_id}: {type(exc).__name__}: {exc}; "
                           f"{outcome}") from None
