"""Notification rules: CRUD (admin, audited in the same transaction) and the
background evaluator that turns conditions into messages on channels.

Kinds and their params (all filters optional; ``*`` is a wildcard):

* ``task_failed``    tasks that reached ``failure`` — ``name``, ``queue``
* ``task_lost``      tasks that reached ``lost`` (the reconciler's verdict) — ``name``, ``queue``
* ``failure_rate``   failed / (succeeded + failed) among tasks finished in the last
  ``window_minutes`` above ``threshold`` (0–1), once at least ``min_finished``
  finished — ``name``, ``queue``
* ``task_stuck``     tasks ``started`` more than ``stuck_after_s`` ago — ``name``, ``queue``
* ``worker_offline`` workers that said offline or sent nothing for
  ``offline_after_s`` (default 60; workers silent for more than a day are
  forgotten) — ``worker``
* ``queue_depth``    queues whose last reported depth is above ``depth`` — ``queue``

Firing. ``task_failed``/``task_lost`` read tasks by finished_at past the
rule's watermark (``LATE_S`` of overlap for late events); each task is sent
once (a dedupe row per task), and the rule sends at most once per
``cooldown_s``: failures that come meanwhile wait and go out together. More
than ``GROUP_AT`` tasks in one message become one grouped message. The other
kinds are conditions with a dedupe key (the rule, a task, a worker, a queue):
one fires when it starts holding, and again while it holds or when it comes
back, but never sooner than ``cooldown_s`` after its last message.

Messages go through ``Notifier.send`` (delivery log, retries, never raises)
to each enabled channel of the rule with source ``rule:<id>``. The evaluator
never raises out of its loop: a failing rule is logged and tried next pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from typing import Any

from z4j_collector.errors import CollectorError, Conflict, NotFound
from z4j_collector.services.audit import Actor, Audit
from z4j_collector.services.notify import Message, Notifier
from z4j_collector.store.base import SqlStore
from z4j_collector.services.periodic import cancel, every

log = logging.getLogger("z4j.collector.rules")

KINDS = ("task_failed", "failure_rate", "task_lost", "task_stuck", "worker_offline", "queue_depth")
INTERVAL_S = 15.0
COOLDOWN_S = 300.0
MAX_COOLDOWN_S = 7 * 86400.0
LATE_S = 60.0
GROUP_AT = 3
MAX_TASKS = 200
FORGET_AFTER_S = 86400.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")
_FILTER = re.compile(r"[^\x00-\x1f]{1,255}")

# kind -> {param: (required, type)}; numbers are checked in _params
PARAMS: dict[str, dict[str, tuple[bool, str]]] = {
    "task_failed": {"name": (False, "filter"), "queue": (False, "filter")},
    "task_lost": {"name": (False, "filter"), "queue": (False, "filter")},
    "failure_rate": {"threshold": (True, "fraction"), "window_minutes": (True, "minutes"),
                     "min_finished": (False, "count"), "name": (False, "filter"), "queue": (False, "filter")},
    "task_stuck": {"stuck_after_s": (True, "seconds"), "name": (False, "filter"), "queue": (False, "filter")},
    "worker_offline": {"offline_after_s": (False, "seconds"), "worker": (False, "filter")},
    "queue_depth": {"depth": (True, "depth"), "queue": (False, "filter")},
}
SEVERITY = {"task_failed": "warning", "task_lost": "critical", "failure_rate": "critical",
            "task_stuck": "warning", "worker_offline": "warning", "queue_depth": "warning"}


def _bad(message: str) -> CollectorError:
    return CollectorError(message, code="invalid_request")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def check_params(kind: str, params: Any) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _bad("params must be a JSON object")
    spec = PARAMS[kind]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise _bad(f"unknown {kind} param(s) {', '.join(unknown)}: use {', '.join(spec)}")
    out: dict[str, Any] = {}
    for key, (required, kind_of) in spec.items():
        value = params.get(key)
        if value is None:
            if required:
                raise _bad(f"a {kind} rule needs params.{key}")
            continue
        if kind_of == "filter":
            if not isinstance(value, str) or not _FILTER.fullmatch(value):
                raise _bad(f"params.{key} must be a name (1 to 255 characters, * as a wildcard)")
            out[key] = value
            continue
        number = _number(value)
        if kind_of == "fraction" and (number is None or not 0 <= number < 1):
            raise _bad(f"params.{key} must be a failure rate from 0 to 1 (0.2 is 20%), got {value!r}")
        if kind_of == "minutes" and (number is None or not 1 <= number <= 1440):
            raise _bad(f"params.{key} must be from 1 to 1440 minutes, got {value!r}")
        if kind_of == "seconds" and (number is None or not 1 <= number <= 30 * 86400):
            raise _bad(f"params.{key} must be from 1 to 2592000 seconds, got {value!r}")
        if kind_of in ("count", "depth") and (number is None or number != int(number) or number < 0
                                              or number > 2 ** 53):
            raise _bad(f"params.{key} must be a whole number of 0 or more, got {value!r}")
        out[key] = int(number) if kind_of in ("count", "depth") else number  # type: ignore[arg-type]
    return out


class Rules:
    def __init__(self, store: SqlStore, audit: Audit, notify: Notifier, interval_s: float | None = None) -> None:
        self.store = store
        self.audit = audit
        self.notify = notify
        self.interval_s = interval_s if interval_s is not None else _interval_from_env()
        self._task: asyncio.Task[None] | None = None
        self._pruned: dict[int, float] = {}

    # ------------------------------------------------------------ CRUD

    async def list(self, project_id: int) -> list[dict[str, Any]]:
        return await self.store.list_rules(project_id)

    async def one(self, project_id: int, rule_id: int) -> dict[str, Any]:
        found = await self.store.get_rule(project_id, rule_id)
        if found is None:
            raise NotFound(f"no notification rule {rule_id} in this project", code="no_such_rule")
        return found

    @staticmethod
    def _checked(body: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        kind = old["kind"] if old else body.get("kind")
        if old is not None and "kind" in body and body["kind"] != kind:
            raise _bad("a rule's kind cannot change: create a new rule")
        if kind not in KINDS:
            raise _bad(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        rule = dict(old or {})
        rule["kind"] = kind
        if old is None or "name" in body:
            name = body.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name.strip()):
                raise _bad("name must be 1 to 100 letters, digits, spaces, '.', '_' or '-'")
            rule["name"] = name.strip()
        if old is None or "params" in body:
            rule["params"] = check_params(kind, body.get("params"))
        if old is None or "channel_ids" in body:
            ids = body.get("channel_ids")
            if not isinstance(ids, list) or not ids or len(ids) > 20 or any(
                    isinstance(i, bool) or not isinstance(i, int) for i in ids):
                raise _bad("channel_ids must be a list of 1 to 20 channel ids")
            rule["channel_ids"] = sorted(set(ids))
        if old is None or "cooldown_s" in body:
            cooldown = _number(body.get("cooldown_s", COOLDOWN_S))
            if cooldown is None or not 0 <= cooldown <= MAX_COOLDOWN_S:
                raise _bad(f"cooldown_s must be from 0 to {MAX_COOLDOWN_S:.0f} seconds, got {body.get('cooldown_s')!r}")
            rule["cooldown_s"] = cooldown
        if old is None or "enabled" in body:
            enabled = body.get("enabled", True)
            if not isinstance(enabled, bool):
                raise _bad(f"enabled must be true or false, got {enabled!r}")
            rule["enabled"] = enabled
        return rule

    async def _check_tx(self, tx: Any, project_id: int, rule: dict[str, Any], rule_id: int | None) -> None:
        other = await self.store.rule_by_name_tx(tx, project_id, rule["name"])
        if other is not None and other["id"] != rule_id:
            raise Conflict(f"a notification rule named {rule['name']!r} already exists", code="rule_exists")
        missing = sorted(set(rule["channel_ids"]) - await self.store.project_channel_ids_tx(tx, project_id))
        if missing:
            raise _bad(f"no notification channel {', '.join(map(str, missing))} in this project")

    @staticmethod
    def _audited(rule: dict[str, Any]) -> dict[str, Any]:
        return {k: rule[k] for k in ("kind", "params", "channel_ids", "cooldown_s", "enabled")}

    async def create(self, project_id: int, body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        rule = self._checked(body, None)
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            await self._check_tx(tx, project_id, rule, None)
            rule_id = await self.store.insert_rule(tx, project_id, rule, now)
            await self.audit.record(tx, actor.entry(project_id, "notify.rule.create", f"rule:{rule['name']}",
                                                    **self._audited(rule)), now)
            return rule_id

        return await self.one(project_id, await self.store.write(tx_fn))

    async def edit(self, project_id: int, rule_id: int, body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        old = await self.one(project_id, rule_id)
        rule = self._checked(body, old)
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            await self._check_tx(tx, project_id, rule, rule_id)
            if not await self.store.update_rule(tx, project_id, rule_id, rule, now):
                raise NotFound(f"no notification rule {rule_id} in this project", code="no_such_rule")
            changed = sorted(k for k in ("name", "params", "channel_ids", "cooldown_s", "enabled")
                             if rule[k] != old[k])
            await self.audit.record(tx, actor.entry(project_id, "notify.rule.update", f"rule:{rule['name']}",
                                                    changed=changed, **self._audited(rule),
                                                    renamed_from=old["name"] if "name" in changed else None), now)

        await self.store.write(tx_fn)
        return await self.one(project_id, rule_id)

    async def delete(self, project_id: int, rule_id: int, actor: Actor) -> None:
        old = await self.one(project_id, rule_id)

        async def tx_fn(tx: Any) -> None:
            if not await self.store.delete_rule(tx, project_id, rule_id):
                raise NotFound(f"no notification rule {rule_id} in this project", code="no_such_rule")
            await self.audit.record(tx, actor.entry(project_id, "notify.rule.delete", f"rule:{old['name']}",
                                                    kind=old["kind"]))

        await self.store.write(tx_fn)

    # ------------------------------------------------------------ evaluator

    def start(self) -> None:
        self._task = asyncio.create_task(
            every(self.interval_s, self.evaluate_all, "notification rules pass", first_now=True))

    async def stop(self) -> None:
        await cancel(self._task)

    async def evaluate_all(self, now: float | None = None) -> None:
        for rule in await self.store.enabled_rules():
            try:
                await self.evaluate(rule, time.time() if now is None else now)
            except Exception:  # noqa: BLE001 - one broken rule must not stop the others
                log.exception("notification rule %s (%s) failed", rule["id"], rule["name"])

    async def evaluate(self, rule: dict[str, Any], now: float) -> None:
        if rule["kind"] in ("task_failed", "task_lost"):
            await self._finished(rule, now, "failure" if rule["kind"] == "task_failed" else "lost")
        else:
            await self._conditions(rule, now)
        if now - self._pruned.get(rule["id"], 0.0) > 3600:
            self._pruned[rule["id"]] = now
            for prefix in ("task:", "worker:", "queue:"):
                await self.store.forget_states(rule["id"], prefix, now - max(FORGET_AFTER_S, rule["cooldown_s"]))

    async def _finished(self, rule: dict[str, Any], now: float, state: str) -> None:
        rid, cooldown = rule["id"], rule["cooldown_s"]
        states = await self.store.rule_states(rid, "watermark")
        states.update(await self.store.rule_states(rid, "rule"))
        mark = states.get("watermark", {}).get("last_value") or rule["created_at"]
        whole = states.get("rule")
        previous = whole["last_fired_at"] if whole else None
        if previous is not None and now - previous < cooldown:
            return  # what failed meanwhile waits for the cooldown, then goes out together
        tasks = await self.store.rule_tasks_since(rid, rule["project_id"], state, mark - LATE_S, rule["params"],
                                                  MAX_TASKS + 1)
        if not tasks:
            return
        more = len(tasks) > MAX_TASKS
        tasks = tasks[:MAX_TASKS]
        if not await self.store.claim_fire(rid, "rule", previous, float(len(tasks)), now):
            return
        new = await self.store.claim_new(rid, [_task_key(t) for t in tasks], now)
        tasks = [t for t in tasks if _task_key(t) in new]
        await self.store.set_watermark(rid, max(mark, max(t["finished_at"] or 0.0 for t in tasks) if tasks else mark),
                                       now)
        what = "failed" if state == "failure" else "lost"
        await self._send_tasks(rule, tasks, what, more)

    async def _send_tasks(self, rule: dict[str, Any], tasks: list[dict[str, Any]], what: str, more: bool) -> None:
        if not tasks:
            return
        if len(tasks) <= GROUP_AT:
            for t in tasks:
                fields = {"task": t["task_id"], "name": t["name"], "queue": t["queue"], "worker": t["worker"],
                          "engine": t["engine"]}
                if t.get("exception"):
                    fields["exception"] = str(t["exception"])[:500]
                await self._send(rule, Message(title=f"z4j: task {t['name'] or t['task_id']} {what}",
                                               text=f"Rule {rule['name']}: task {t['task_id']} {what}.",
                                               severity=SEVERITY[rule["kind"]], fields=_clean(fields)))
            return
        count = f"{len(tasks)}{'+' if more else ''}"
        names: dict[str, int] = {}
        for t in tasks:
            names[t["name"] or "?"] = names.get(t["name"] or "?", 0) + 1
        listed = ", ".join(t["task_id"] for t in tasks[:10]) + (" …" if len(tasks) > 10 else "")
        await self._send(rule, Message(
            title=f"z4j: {count} tasks {what}", text=f"Rule {rule['name']}: {count} tasks {what}.",
            severity=SEVERITY[rule["kind"]],
            fields={"count": count, "by_name": ", ".join(f"{n} ×{c}" for n, c in sorted(names.items())),
                    "tasks": listed}))

    async def _conditions(self, rule: dict[str, Any], now: float) -> None:
        rid, pid, params, kind = rule["id"], rule["project_id"], rule["params"], rule["kind"]
        holding: dict[str, tuple[float | None, dict[str, Any]]] = {}
        if kind == "failure_rate":
            window = params["window_minutes"] * 60
            failed, finished = await self.store.rule_failure_counts(pid, now - window, params)
            rate = failed / finished if finished else 0.0
            if finished and finished >= params.get("min_finished", 1) and rate > params["threshold"]:
                holding["rule"] = (rate, {"failure_rate": f"{rate:.1%}", "failed": failed, "finished": finished,
                                          "window_minutes": _plain(params["window_minutes"]),
                                          "threshold": f"{params['threshold']:.1%}",
                                          **{k: params[k] for k in ("name", "queue") if k in params}})
        elif kind == "task_stuck":
            for t in await self.store.rule_stuck_tasks(pid, now - params["stuck_after_s"], params, MAX_TASKS):
                holding[_task_key(t)] = (now - (t["started_at"] or now), t)
        elif kind == "worker_offline":
            after = params.get("offline_after_s", 60.0)
            for w in await self.store.rule_offline_workers(pid, now - after, now - FORGET_AFTER_S, params):
                holding[f"worker:{w['engine']}:{w['name']}"] = (now - (w["last_seen_at"] or now), w)
        elif kind == "queue_depth":
            for q in await self.store.rule_deep_queues(pid, params["depth"], params):
                holding[f"queue:{q['engine']}:{q['name']}"] = (float(q["depth"]), q)
        states = await self.store.rule_states(rid)
        fired: list[tuple[str, float | None, dict[str, Any]]] = []
        quiet: dict[str, float | None] = {}
        for key, (value, facts) in holding.items():
            st = states.get(key)
            last = st["last_fired_at"] if st else None
            if (last is None or now - last >= rule["cooldown_s"]) and \
                    await self.store.claim_fire(rid, key, last, value, now):
                fired.append((key, value, facts))
            else:
                quiet[key] = value
        cleared = [k for k, st in states.items() if st["active"] and k not in holding]
        await self.store.note_states(rid, quiet, cleared, now)
        if fired:
            await self._send_conditions(rule, fired, now)

    async def _send_conditions(self, rule: dict[str, Any], fired: list[tuple[str, float | None, dict[str, Any]]],
                               now: float) -> None:
        kind, params, severity = rule["kind"], rule["params"], SEVERITY[rule["kind"]]
        if kind == "failure_rate":
            facts = fired[0][2]
            await self._send(rule, Message(
                title=f"z4j: failure rate {facts['failure_rate']} over {facts['window_minutes']} min",
                text=f"Rule {rule['name']}: {facts['failed']} of {facts['finished']} finished tasks failed in the "
                     f"last {facts['window_minutes']} minutes (above {facts['threshold']}).",
                severity=severity, fields=facts))
            return
        if kind == "task_stuck":
            tasks = [facts for _, _, facts in fired]
            if len(tasks) <= GROUP_AT:
                for t in tasks:
                    await self._send(rule, Message(
                        title=f"z4j: task {t['name'] or t['task_id']} stuck",
                        text=f"Rule {rule['name']}: task {t['task_id']} started {now - t['started_at']:.0f} s ago "
                             f"and has not finished (limit {_plain(params['stuck_after_s'])} s).",
                        severity=severity, fields=_clean({"task": t["task_id"], "name": t["name"], "queue": t["queue"],
                                                          "worker": t["worker"], "engine": t["engine"]})))
            else:
                await self._send(rule, Message(
                    title=f"z4j: {len(tasks)} tasks stuck",
                    text=f"Rule {rule['name']}: {len(tasks)} tasks started more than "
                         f"{_plain(params['stuck_after_s'])} s ago and have not finished.",
                    severity=severity, fields={"count": len(tasks), "tasks": ", ".join(
                        t["task_id"] for t in tasks[:10]) + (" …" if len(tasks) > 10 else "")}))
            return
        what = "worker" if kind == "worker_offline" else "queue"
        rows = [facts for _, _, facts in fired]
        if len(rows) <= GROUP_AT:
            for r in rows:
                if what == "worker":
                    text = (f"Rule {rule['name']}: worker {r['name']} ({r['engine']}) is "
                            f"{'offline' if r['state'] == 'offline' else 'silent'}; last seen "
                            f"{now - r['last_seen_at']:.0f} s ago.")
                    message = Message(title=f"z4j: worker {r['name']} offline", text=text, severity=severity,
                                      fields={"worker": r["name"], "engine": r["engine"], "state": r["state"]})
                else:
                    message = Message(title=f"z4j: queue {r['name']} depth {r['depth']}",
                                      text=f"Rule {rule['name']}: queue {r['name']} ({r['engine']}) holds "
                                           f"{r['depth']} messages (above {params['depth']}).",
                                      severity=severity, fields={"queue": r["name"], "engine": r["engine"],
                                                                 "depth": r["depth"]})
                await self._send(rule, message)
            return
        names = ", ".join(r["name"] for r in rows[:20]) + (" …" if len(rows) > 20 else "")
        title = f"z4j: {len(rows)} workers offline" if what == "worker" else \
            f"z4j: {len(rows)} queues above {params['depth']}"
        await self._send(rule, Message(title=title, text=f"Rule {rule['name']}: {names}.", severity=severity,
                                       fields={"count": len(rows), f"{what}s": names}))

    async def _send(self, rule: dict[str, Any], message: Message) -> None:
        fields = {"project": await self.store.project_slug(rule["project_id"]), "rule": rule["name"], **message.fields}
        message = Message(title=message.title, text=message.text, severity=message.severity, fields=fields,
                          url=message.url)
        for channel_id in rule["channel_ids"]:
            channel = await self.store.get_channel(rule["project_id"], channel_id)
            if channel is None or not channel["enabled"]:
                continue  # deleted or disabled: nothing to send on
            await self.notify.send(rule["project_id"], channel, message, source=f"rule:{rule['id']}")


def _task_key(t: dict[str, Any]) -> str:
    return f"task:{t['engine']}:{t['task_id']}"


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v not in (None, "")}


def _plain(number: float) -> str:
    return f"{number:g}"


def _interval_from_env() -> float:
    raw = os.environ.get("Z4J_RULES_INTERVAL_S")
    if not raw:
        return INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        log.warning("Z4J_RULES_INTERVAL_S must be a number of seconds from 0 to 3600, got %r: using %s", raw,
                    INTERVAL_S)
        return INTERVAL_S
    return value
