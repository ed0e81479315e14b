"""How task events fold into the one row per task (no SQL here).

The same rules hold in Python (folding a batch's events per task) and in the
store's upsert (folding that result into the stored row):

* state moves to the event with the highest (rank, timestamp): a terminal
  state is never demoted by a late event, and ``lost`` yields to any real
  terminal state (protocol.state_rank);
* descriptive fields (name, queue, args, ...) take the newest non-null value;
* ``created_at`` is the earliest event, ``updated_at`` the latest;
  ``retries`` only grows; ``redacted`` sticks.
"""

from __future__ import annotations

from typing import Any

import msgspec

from z4j_agents import protocol as p

TASK_COLUMNS = (
    "project_id", "engine", "task_id", "name", "state", "engine_state", "state_rank", "state_ts",
    "queue", "worker", "args", "kwargs", "result", "exception", "traceback", "runtime", "retries",
    "eta", "parent_id", "root_id", "group_id", "chord_id", "redacted", "replay", "created_at",
    "sent_at", "received_at", "started_at", "finished_at", "updated_at", "agent_id", "event_ids",
)
_INDEX = {name: i for i, name in enumerate(TASK_COLUMNS)}
_COPIED = ("name", "queue", "worker", "exception", "traceback", "runtime", "eta",
           "parent_id", "root_id", "group_id", "chord_id", "replay")
_JSON = ("args", "kwargs", "result")
_TIME_COLUMN = {
    "sent": "sent_at",
    "received": "received_at",
    "started": "started_at",
    "succeeded": "finished_at",
    "failed": "finished_at",
    "revoked": "finished_at",
    "rejected": "finished_at",
    "lost": "finished_at",
}
_json_encode = msgspec.json.Encoder().encode
astuple = msgspec.structs.astuple
_FIELD_POS = {name: i for i, name in enumerate(p.TaskEvent.__struct_fields__)}
_COPY_PLAN = tuple((_FIELD_POS[name], _INDEX[name]) for name in _COPIED)
_JSON_PLAN = tuple((_FIELD_POS[name], _INDEX[name]) for name in _JSON)
_RANK, _STATE, _STATE_TS, _ENGINE_STATE = (_INDEX[c] for c in ("state_rank", "state", "state_ts", "engine_state"))
_CREATED, _UPDATED, _REDACTED, _AGENT, _RETRIES, _EVENT_IDS = (
    _INDEX[c] for c in ("created_at", "updated_at", "redacted", "agent_id", "retries", "event_ids"))

# Columns whose upsert rule is not "newest non-null wins".
STATE_COLUMNS = ("state", "engine_state", "state_rank", "state_ts")
KEY_COLUMNS = ("project_id", "engine", "task_id")


def fold(project_id: int, agent_id: int | None, events: list[p.TaskEvent]) -> list[list[Any]]:
    """One row per (engine, task_id) from new events, oldest applied first."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for ev in sorted(events, key=_by_ts):
        values = astuple(ev)
        key = (ev.engine, ev.task_id)
        row = rows.get(key)
        state = p.KIND_TO_STATE[ev.kind]
        rank = p.state_rank(state)
        if row is None:
            row = [None] * len(TASK_COLUMNS)
            row[0], row[1], row[2] = project_id, ev.engine, ev.task_id
            row[_RANK] = -1
            row[_CREATED] = ev.ts
            row[_REDACTED] = False
            row[_AGENT] = agent_id
            rows[key] = row
        if (rank, ev.ts) >= (row[_RANK], row[_STATE_TS] or 0.0):
            row[_STATE] = state
            row[_RANK] = rank
            row[_STATE_TS] = ev.ts
            row[_ENGINE_STATE] = ev.engine_state or state.upper()
        for field_pos, column in _COPY_PLAN:
            value = values[field_pos]
            if value is not None:
                row[column] = value
        for field_pos, column in _JSON_PLAN:
            value = values[field_pos]
            if value is not None:
                row[column] = _json_encode(value).decode()
        if ev.retries is not None and (row[_RETRIES] or 0) <= ev.retries:
            row[_RETRIES] = ev.retries
        time_column = _TIME_COLUMN.get(ev.kind)  # "retried" has no time column of its own
        if time_column is not None:
            row[_INDEX[time_column]] = ev.ts
        row[_UPDATED] = ev.ts
        if ev.redacted:
            row[_REDACTED] = True
        row[_EVENT_IDS] = ev.id if row[_EVENT_IDS] is None else f"{row[_EVENT_IDS]},{ev.id}"
    return list(rows.values())


def _by_ts(ev: p.TaskEvent) -> float:
    return ev.ts




def merge_rows(old: list[Any], new: list[Any]) -> list[Any]:
    """Fold row ``new`` into row ``old`` exactly as the store's upsert does."""
    out = list(old)
    i = _INDEX
    newer = (new[i["state_rank"]], new[i["state_ts"]]) >= (old[i["state_rank"]], old[i["state_ts"]])
    for name in TASK_COLUMNS:
        k = i[name]
        if name in KEY_COLUMNS:
            continue
        if name in STATE_COLUMNS:
            out[k] = new[k] if newer else old[k]
        elif name == "created_at":
            out[k] = min(old[k], new[k])
        elif name == "updated_at":
            out[k] = max(old[k], new[k])
        elif name == "retries":
            out[k] = max((v for v in (old[k], new[k]) if v is not None), default=None)
        elif name == "redacted":
            out[k] = bool(old[k] or new[k])
        elif name == "event_ids":
            out[k] = ",".join(v for v in (old[k], new[k]) if v)
        elif new[k] is not None:
            out[k] = new[k]
    return out
