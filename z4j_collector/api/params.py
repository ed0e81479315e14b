"""Parsing of query parameters shared by several routes."""

from __future__ import annotations

import base64
import math
import re
import time
from datetime import datetime, timezone
from typing import Any

import msgspec

from z4j_agents.protocol import TASK_STATES
from z4j_collector.errors import CollectorError
from z4j_collector.store.base import Cursor

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str | None, name: str) -> float | None:
    """Epoch seconds, ISO 8601 (naive means UTC), or an age like 15m, 2h, 7d."""
    if value is None or value == "":
        return None
    value = value.strip()
    match = _RELATIVE.match(value)
    if match:
        return time.time() - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise CollectorError(f"{name} must be a finite time, got {value!r}", code="bad_time")
        return number
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CollectorError(
            f"{name} must be epoch seconds, an ISO 8601 time or an age like 15m/2h/7d, got {value!r}",
            code="bad_time",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_states(value: str | None, name: str) -> tuple[str, ...]:
    if not value:
        return ()
    states = tuple(s.strip().lower() for s in value.split(",") if s.strip())
    unknown = [s for s in states if s not in TASK_STATES]
    if unknown:
        raise CollectorError(
            f"unknown {name} {', '.join(unknown)}: use {', '.join(TASK_STATES)}", code="bad_state"
        )
    return states


SEARCH_MIN = 3


def parse_search(value: str | None) -> str | None:
    """Free text of three characters or more: the text index is made of
    trigrams, and a shorter text would read every task of the project."""
    if value is None or value == "":
        return None
    if len(value.strip()) < SEARCH_MIN:
        raise CollectorError(
            f"search needs at least {SEARCH_MIN} characters, got {value!r}: for a shorter value, filter by "
            "name, queue or worker", code="bad_search")
    return value


def encode_cursor(row: dict) -> str:
    raw = msgspec.json.encode([row["created_at"], row["engine"], row["task_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> Cursor | None:
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        created_at, engine, task_id = msgspec.json.decode(raw, type=tuple[float, str, str])
    except Exception:  # noqa: BLE001 - any garbage is the same mistake
        raise CollectorError("cursor is not one this API handed out", code="bad_cursor") from None
    return created_at, engine, task_id


def object_body(data: Any, allowed: set[str]) -> dict[str, Any]:
    """A JSON-object body with only ``allowed`` fields (an ``agent_id``, when
    allowed and given, is an integer id)."""
    if not isinstance(data, dict):
        raise CollectorError("the body must be a JSON object", code="invalid_request")
    unknown = set(data) - allowed
    if unknown:
        raise CollectorError(f"unknown field(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(allowed))}",
                             code="invalid_request")
    agent_id = data.get("agent_id")
    if agent_id is not None and (isinstance(agent_id, bool) or not isinstance(agent_id, int)):
        raise CollectorError(f"agent_id must be an agent's id, got {agent_id!r}", code="invalid_request")
    return data


def check_wait(value: float) -> float:
    """How long a route may wait for an agent's answer: 0 to 30 seconds."""
    if not 0 <= value <= 30:
        raise CollectorError("wait must be between 0 and 30 seconds", code="bad_wait")
    return value
