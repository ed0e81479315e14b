"""SVG snapshots of the operations screens (workers, queues, schedules,
audit, trends) at 80x24 and 160x48, and of two dialogs (a purge's
confirmation, the schedule form) at 80x24.

Workers, queues and trends come from a real collector (SQLite) with pinned
content: every time an agent sent is fixed (around 2026-11-21 20:07 UTC), the
app's clock is pinned a minute later, the header names the collector
instead of its random port. Schedules and audit entries carry times the
collector sets itself (beat computes the next run from the wall clock; an
audit entry's time and hash are the moment it was written), so those two
screens run on recorded answers (RECORDED, shaped like the real ones: the
live answers are checked against their keys in tests/tui/test_ops.py).
Update with ``--snapshot-update`` after checking the SVGs by eye."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.collector import mint_agent, mint_tokens, module_collector, wait_until
from tests.tui.helpers import screen_text, steady, until
from tests.tui.ops_world import OpsApp
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_tui.client import Client

T0 = 1795291669.0
"""2026-11-21 20:07:49 UTC."""
NOW = T0 + 60
SIZES = [(80, 24), (160, 48)]
NAMES = {"billing.charge": "billing", "reports.build": "reports", "emails.send": "default"}

RECORDED: dict[tuple[str, str], Any] = {
    ("GET", "/api/v1/projects"): [
        {"id": 1, "slug": "default", "name": "Default", "retention_days": 30, "created_at": T0 - 86400,
         "role": "admin"}],
    ("GET", "/api/v1/projects/default/schedules"): [
        {"id": 1, "engine": "celery", "scheduler": "file", "name": "cleanup-code", "task": "maintenance.cleanup",
         "schedule": {"kind": "interval", "every": 3600.0}, "args": [], "kwargs": {}, "queue": None, "options": {},
         "enabled": True, "redacted": False, "next_run_at": T0 + 1800, "last_run_at": T0 - 1800,
         "total_run_count": 41, "source": "code", "agent_id": 2, "agent_connected": True, "created_at": T0 - 86400, "updated_at": T0 - 86400,
         "synced_at": NOW - 1},
        {"id": 2, "engine": "celery", "scheduler": "file", "name": "nightly-report", "task": "reports.build",
         "schedule": {"kind": "crontab", "minute": "30", "hour": "2", "day_of_week": "*", "day_of_month": "*",
                      "month_of_year": "*"},
         "args": [7], "kwargs": {"password": "[redacted]", "fmt": "pdf"}, "queue": "reports", "options": {},
         "enabled": True, "redacted": True, "next_run_at": T0 + 18000, "last_run_at": T0 - 68400,
         "total_run_count": 12, "source": "z4j", "agent_id": 2, "agent_connected": True, "created_at": T0 - 86400 * 12,
         "updated_at": T0 - 3600, "synced_at": NOW - 1},
        {"id": 3, "engine": "celery", "scheduler": "file", "name": "poll-mail", "task": "emails.send",
         "schedule": {"kind": "interval", "every": 300.0}, "args": [], "kwargs": {"box": "ops"}, "queue": None,
         "options": {}, "enabled": False, "redacted": False, "next_run_at": None, "last_run_at": T0 - 7200,
         "total_run_count": 300, "source": "z4j", "agent_id": 2, "agent_connected": True, "created_at": T0 - 86400 * 3,
         "updated_at": T0 - 7000, "synced_at": NOW - 1},
        {"id": 4, "engine": "celery", "scheduler": "file", "name": "year-end", "task": "billing.close_year",
         "schedule": {"kind": "clocked", "at": 1798761600.0}, "args": [2026], "kwargs": {}, "queue": "billing",
         "options": {}, "enabled": True, "redacted": False, "next_run_at": 1798761600.0, "last_run_at": None,
         "total_run_count": 0, "source": "z4j", "agent_id": 2, "agent_connected": True, "created_at": T0 - 600, "updated_at": T0 - 600,
         "synced_at": NOW - 1},
    ],
    ("GET", "/api/v1/projects/default/audit"): {"next_before": None, "entries": [
        {"id": 9 - i, "project_id": 1, "seq": 9 - i, "ts": T0 - 40 * i, "actor": actor, "actor_user_id": None,
         "source": None if actor.startswith(("agent", "system")) else "10.0.0.7", "action": action,
         "target": target, "outcome": outcome, "detail": detail,
         "prev_hash": f"{8 - i:064x}", "hash": f"{9 - i:064x}"}
        for i, (actor, action, target, outcome, detail) in enumerate([
            ("agent:1", "command.celery.purge.result", "command:01a2c0", "ok", {"command": "01a2c0"}),
            ("ops@example.com", "command.celery.purge", "queue:billing", "sent",
             {"args": {"queue": "billing", "name": "billing.charge", "older_than_s": 3600.0}, "agent": 1}),
            ("ops@example.com", "command.celery.retry", "task:billing-07", "refused",
             {"reason": "the original arguments were not captured; nothing was sent"}),
            ("ops@example.com", "schedule.disable", "schedule:poll-mail", "ok", {"engine": "celery"}),
            ("admin@example.com", "schedule.create", "schedule:nightly-report", "ok",
             {"task": "reports.build", "schedule": {"kind": "crontab", "expr": "30 2 * * *"}}),
            ("system", "task.reconciled", "task:emails-3", "lost", {"old": "started", "new": "lost"}),
            ("admin@example.com", "agent.create", "agent:beat", "ok", {"name": "beat"}),
            ("admin@example.com", "member.set", "user:3", "ok", {"role": "operator"}),
            ("root@example.com", "project.create", "project:default", "ok", {"slug": "default"}),
        ])]},
    ("GET", "/api/v1/projects/default/audit/verify"): {
        "project_id": 1, "ok": True, "rows": 9, "first_seq": 1, "last_seq": 9, "head_hash": f"{9:064x}",
        "anchored_on": None, "checkpoints_checked": 1, "problems": []},
}


class RecordedClient(Client):
    """Answers from RECORDED; anything else is a test bug."""

    def __init__(self) -> None:
        super().__init__("http://collector.invalid:7400", "z4jt_recorded")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return copy.deepcopy(RECORDED[(method, path)])


class SnapApp(OpsApp):
    def show_subtitle(self) -> None:
        self.sub_title = f"{self.project} · collector"


def emit(agent: Agent) -> None:
    def worker(name: str, kind: str, ts: float, **info: Any) -> None:
        agent.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=name, engine="celery", kind=kind, ts=ts,
                                         info=info or None))

    worker("w1", "online", T0 + 58, active=2, processed=1234, loadavg=[0.42, 0.3, 0.2], concurrency=4,
           pool="prefork")
    worker("w2", "heartbeat", T0 - 540, active=0, processed=77, loadavg=[1.5, 1.2, 1.0], concurrency=2,
           pool="threads")
    worker("w3", "offline", T0 - 3600)
    for queue, depth in (("default", 12), ("billing", 3), ("reports", 0)):
        agent.runtime.emit(p.QueueEvent(id=p.new_id(), queue=queue, engine="celery", ts=T0 + 50, depth=depth))
    minute = T0 // 60 * 60
    for i in range(120):
        name = list(NAMES)[i % 3]
        ts = minute - 60 * (1 + i % 40) + i % 7
        runtime = 0.05 * (1 + (i * 7) % 23)
        failed = name == "billing.charge" and i % 4 == 0
        agent.task(f"t-{i:03d}", "sent", ts=ts, name=name, queue=NAMES[name])
        agent.task(f"t-{i:03d}", "started", ts=ts + 1, worker="w1")
        agent.task(f"t-{i:03d}", "failed" if failed else "succeeded", ts=ts + 1 + runtime, runtime=runtime)


@pytest.fixture(scope="module", params=["sqlite"])
def pinned(request, tmp_path_factory):
    collector = module_collector(request, tmp_path_factory, "tui-ops-snap", Z4J_TRENDS_FLUSH_S="0.3",
                                 Z4J_RECONCILE_INTERVAL_S=86400)
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "snap-ops"))), engine="celery")
    emit(agent)
    assert agent.flush(30), agent.runtime.last_error
    agent.stop()
    token = mint_tokens(collector, "admin")["admin"]
    api = collector.api(token)

    def rolled_up() -> bool:
        body = api.get("/api/v1/projects/default/trends", params={
            "bucket": "day", "group_by": "engine", "since": str(T0 - 86400 * 2), "until": str(T0 + 86400)}).json()
        return sum(b["counts"]["success"] + b["counts"]["failure"] for g in body["groups"] for b in g["buckets"]) == 120

    wait_until(rolled_up, timeout=30, what="the rollups")
    return collector, token


def rows_ready(count: int):
    async def ready(pilot) -> None:
        await until(pilot, lambda: len(pilot.app.screen.shown) == count and pilot.app.screen.role_known,
                    f"{count} rows")
    return ready


async def trends_ready(pilot) -> None:
    await until(pilot, lambda: len(pilot.app.screen.all_series) == 3, "the trends")


async def audit_ready(pilot) -> None:
    await rows_ready(9)(pilot)
    await until(pilot, lambda: "chain verified" in screen_text(pilot.app), "the verification")


async def purge_dialog(pilot) -> None:
    await rows_ready(3)(pilot)
    await pilot.press("down", "p")
    # The form exists before it has focused its first field: keys typed then
    # would go to the screen instead.
    await until(pilot, lambda: getattr(pilot.app.focused, "id", None) == "purge-name", "the purge form's focus")
    await pilot.press(*"billing.charge", "tab", *"1h", "enter")
    await until(pilot, lambda: pilot.app.screen.query("#confirm"), "the confirmation")


async def schedule_form(pilot) -> None:
    await rows_ready(4)(pilot)
    await pilot.press("down", "e")
    await until(pilot, lambda: pilot.app.screen.query("#sched-when"), "the form")


LIVE = {"workers": rows_ready(3), "queues": rows_ready(3), "trends": trends_ready}
RECORDED_SCREENS = {"schedules": rows_ready(4), "audit": audit_ready}


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("screen", list(LIVE))
def test_live_screen(pinned, snap_compare, screen, size):
    collector, token = pinned
    app = SnapApp(Client(collector.url, token), "default", refresh_interval=3600, now=lambda: NOW, start=screen)
    assert snap_compare(app, terminal_size=size, run_before=steady(LIVE[screen]))


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("screen", list(RECORDED_SCREENS))
def test_recorded_screen(snap_compare, screen, size):
    app = SnapApp(RecordedClient(), "default", refresh_interval=3600, now=lambda: NOW, start=screen)
    assert snap_compare(app, terminal_size=size, run_before=steady(RECORDED_SCREENS[screen]))


def test_purge_confirmation(pinned, snap_compare):
    collector, token = pinned
    app = SnapApp(Client(collector.url, token), "default", refresh_interval=3600, now=lambda: NOW, start="queues")
    assert snap_compare(app, run_before=steady(purge_dialog))


def test_schedule_form(snap_compare):
    app = SnapApp(RecordedClient(), "default", refresh_interval=3600, now=lambda: NOW, start="schedules")
    assert snap_compare(app, run_before=steady(schedule_form))


def test_a_broken_chain_says_where():
    """What the audit screen puts on top when verification fails (the
    collector's own tests tamper with real chains: tests/collector/test_audit.py)."""
    from z4j_tui.screens.audit import verify_text

    broken = {**RECORDED[("GET", "/api/v1/projects/default/audit/verify")], "ok": False, "problems": [
        {"seq": 4, "row_id": 4, "kind": "changed", "message": "hash does not match the row"},
        {"seq": 5, "row_id": 5, "kind": "broken_link", "message": "prev_hash is not the hash of seq 4"},
        {"seq": 7, "row_id": None, "kind": "missing", "message": "seq 7 is missing"},
        {"seq": 9, "row_id": 9, "kind": "changed", "message": "hash does not match the row"}]}
    lines = verify_text(broken, None, {"bad": "#ff0000"}).plain.splitlines()
    assert lines == ["✗ CHAIN BROKEN: 4 problem(s) in 9 entries",
                     "  seq 4: changed: hash does not match the row",
                     "  seq 5: broken_link: prev_hash is not the hash of seq 4",
                     "  seq 7: missing: seq 7 is missing",
                     "  … and 1 more (z4j audit verify lists them all)"]
    assert verify_text(None, "403: audit:read needs the operator role (forbidden)", {}).plain.startswith(
        "chain not verified: 403")


def test_light_theme(snap_compare):
    """The same colours from the light theme (ctrl+t)."""
    app = SnapApp(RecordedClient(), "default", refresh_interval=3600, now=lambda: NOW, start="audit")

    async def light(pilot) -> None:
        await audit_ready(pilot)
        await pilot.press("ctrl+t")
        await until(pilot, lambda: not pilot.app.current_theme.dark, "the light theme")
        pilot.app.screen.action_reload()  # the rows' colours follow at the next answer
        await until(pilot, lambda: pilot.app.screen.tones.get("good") == pilot.app.get_css_variables()["text-success"],
                    "the light rows")

    assert snap_compare(app, run_before=steady(light))
