"""``dramatiq.schedules.*``: Dramatiq has no scheduler in core.

The list answers what this process can see: actors declared with periodiq's
``periodic`` option (``@dramatiq.actor(periodic=cron("0 * * * *"))``, run by a
separate ``periodiq`` process) are listed read-only, as code entries; without
any, the list is empty and says why. Changes are refused with one sentence:
periodiq schedules live in code, and Dramatiq itself keeps none (its docs
suggest APScheduler, whose jobs live in the process that runs it).
Trigger-now of a listed entry sends its actor at once.
"""

from __future__ import annotations

from typing import Any

from z4j_agents.runtime import CommandError

NOTE = ("Dramatiq has no scheduler in core: periodic messages come from a separate process (periodiq, APScheduler, "
        "cron); z4j lists periodiq actors (read-only) and cannot create or edit schedules for Dramatiq")
REFUSAL = ("Dramatiq has no scheduler in core, so z4j cannot {verb} a Dramatiq schedule: periodic messages come "
           "from periodiq actors in code or from your own scheduler process")


def register(agent: Any) -> None:
    broker = agent.broker
    runtime = agent.runtime
    runtime.on_command("dramatiq.schedules.list", lambda args: list_schedules(broker))
    runtime.on_command("dramatiq.schedules.upsert", lambda args: _refuse("create or edit"))
    runtime.on_command("dramatiq.schedules.delete", lambda args: _refuse("delete"))
    runtime.on_command("dramatiq.schedules.trigger", lambda args: trigger(broker, args))


def _refuse(verb: str) -> Any:
    raise CommandError(REFUSAL.format(verb=verb))


def periodic_actors(broker: Any) -> dict[str, Any]:
    return {name: actor for name, actor in list(broker.actors.items()) if actor.options.get("periodic") is not None}


def list_schedules(broker: Any) -> dict[str, Any]:
    entries = []
    for name, actor in sorted(periodic_actors(broker).items()):
        spec = actor.options["periodic"]
        entries.append({"name": name, "task": name, "code": True, "enabled": True, "queue": actor.queue_name,
                        "schedule": {"kind": "crontab", "expr": str(getattr(spec, "spec", spec))},
                        "args": [], "kwargs": {}, "options": {}, "redacted": False})
    out: dict[str, Any] = {"scheduler": "periodiq" if entries else "none", "read_only": REFUSAL.format(verb="change"),
                           "entries": entries, "fires": []}
    if not entries:
        out["note"] = NOTE
    return out


def trigger(broker: Any, args: dict[str, Any]) -> dict[str, Any]:
    name = args.get("name") if isinstance(args, dict) else None
    actor = periodic_actors(broker).get(name) if isinstance(name, str) else None
    if actor is None:
        raise CommandError(f"no periodic Dramatiq actor named {name!r} in this worker; nothing was sent")
    message = actor.send()
    return {"task_id": message.message_id, "fire": None}
