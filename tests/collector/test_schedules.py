"""Must show: schedules through a real collector (SQLite and PostgreSQL) and a
real beat agent (z4j_agents.celery.beat, in process, over the real
Z4JScheduler of a Celery app): created, edited, disabled, triggered and
deleted through the API, reaching the scheduler's own file and read back;
entries of beat_schedule listed read-only; fires recorded once each; one-line
reasons for bad crontabs, intervals, JSON args and options; RBAC (viewer
reads, operator enables/disables/triggers, admin creates/edits/deletes); every
change audited, refusals too. The real `celery beat` runs in
tests/engines/celery/test_beat.py."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.collector import mint_agent, mint_tokens, module_collector, wait_agent_connected, wait_until
from tests.support.dbs import DBS, on_one_db
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_collector.errors import CollectorError
from z4j_collector.services.schedules import check_change, check_spec

celery = pytest.importorskip("celery")

from z4j_agents.celery.beat import Z4JScheduler  # noqa: E402
from z4j_agents.celery.beat.adapter import BeatAdapter  # noqa: E402
from z4j_agents.celery.beat.scheduler import read_file  # noqa: E402

SCHEDULES = "/api/v1/projects/default/schedules"


# ------------------------------------------------------------------ validation, no server


@pytest.mark.parametrize("spec, reason", [
    ({"kind": "interval", "every": 0}, "interval every must be between 1 second and 366 days, got 0"),
    ({"kind": "interval", "every": "5"}, "interval every must be a number of seconds, got '5'"),
    ({"kind": "interval", "every": 5, "relative": True}, "unknown interval field(s) relative"),
    ({"kind": "crontab", "minute": "61"}, "crontab minute '61': 61 is outside 0-59"),
    ({"kind": "crontab", "hour": "*/0"}, "crontab hour '*/0': a step must be 1 or more"),
    ({"kind": "crontab", "day_of_week": "funday"}, "crontab day_of_week 'funday': 'funday' is not a number or a name"),
    ({"kind": "crontab", "expr": "* * *"}, "crontab expr must have 5 fields"),
    ({"kind": "crontab", "minute": "5-1"}, "crontab minute '5-1': range 5-1 runs backwards"),
    ({"kind": "crontab", "second": "1"}, "unknown crontab field(s) second"),
    ({"kind": "clocked", "at": 1000.0}, "clocked at 1000.0 is in the past"),
    ({"kind": "solar"}, "unknown schedule kind 'solar': use interval, crontab or clocked"),
    ("every minute", "schedule must be an object with a kind"),
])
def test_bad_specs_get_one_line_reasons(spec, reason):
    with pytest.raises(CollectorError) as err:
        check_spec(spec)
    assert err.value.code == "bad_schedule"
    assert err.value.message.startswith(reason), err.value.message
    assert "\n" not in err.value.message


def test_good_specs_are_normalized():
    assert check_spec({"kind": "interval", "every": 30}) == {"kind": "interval", "every": 30.0}
    assert check_spec({"kind": "crontab", "expr": "*/5 9-17 * * mon-fri"}) == {
        "kind": "crontab", "minute": "*/5", "hour": "9-17", "day_of_week": "mon-fri", "day_of_month": "*",
        "month_of_year": "*"}
    assert check_spec({"kind": "crontab", "minute": "0", "day_of_week": "sun,6"})["day_of_week"] == "sun,6"


@pytest.mark.parametrize("body, code, reason", [
    ({"name": "x", "task": "t", "schedule": {"kind": "interval", "every": 5}, "args": {"a": 1}}, "bad_args",
     "args must be a JSON array, got dict"),
    ({"name": "x", "task": "t", "schedule": {"kind": "interval", "every": 5}, "kwargs": [1]}, "bad_kwargs",
     "kwargs must be a JSON object, got list"),
    ({"name": "x", "task": "t", "schedule": {"kind": "interval", "every": 5}, "options": {"color": 1}},
     "bad_options", "unknown option 'color'"),
    ({"name": "x", "task": "t", "schedule": {"kind": "interval", "every": 5}, "options": {"priority": "high"}},
     "bad_options", "option priority must be int, got 'high'"),
    ({"name": "x", "task": "my task", "schedule": {"kind": "interval", "every": 5}}, "bad_task", "task must be"),
    ({"name": "", "task": "t", "schedule": {"kind": "interval", "every": 5}}, "bad_name", "name must be"),
    ({"name": "x", "task": "t"}, "bad_schedule", "schedule is required"),
])
def test_bad_changes_get_one_line_reasons(body, code, reason):
    with pytest.raises(CollectorError) as err:
        check_change(body, creating=True)
    assert err.value.code == code and err.value.message.startswith(reason), err.value.message


def test_an_empty_edit_is_refused():
    with pytest.raises(CollectorError) as err:
        check_change({}, creating=False)
    assert err.value.code == "empty_change"


# ------------------------------------------------------------------ a real collector and beat agent


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def beat(request, tmp_path_factory):
    """A collector syncing every 0.3 s, a Celery app with one code entry, its
    Z4JScheduler, and the beat agent on it (connected): one per database for
    the module. The tests below run in file order on it, each with schedules
    of its own names; the last one stops the agent."""
    tmp_path = tmp_path_factory.mktemp("beat")
    app = celery.Celery("sched_test", broker="memory://", backend="cache+memory://")
    app.conf.beat_schedule = {"code-entry": {"task": "proj.cleanup", "schedule": 3600.0}}
    app.conf.result_expires = None
    scheduler = Z4JScheduler(app=app, schedule_filename=str(tmp_path / "celerybeat-schedule"))
    collector = module_collector(request, tmp_path_factory, "schedules", Z4J_SCHEDULE_SYNC_S=0.3)
    creds = mint_agent(collector, "beat")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="celery", start=False)
    adapter = BeatAdapter(app, scheduler, agent)
    adapter.register(agent)
    adapter.watch()
    agent.start()
    try:
        tokens = mint_tokens(collector, "viewer", "operator", "admin")
        apis = {role: collector.api(token) for role, token in tokens.items()}
        wait_agent_connected(apis["admin"], "beat")
        yield collector, apis, scheduler, agent, creds
    finally:
        agent.stop()
        scheduler.close()


def by_name(api, name):
    for row in api.get(SCHEDULES).raise_for_status().json():
        if row["name"] == name:
            return row
    return None


def audit(api, action):
    return api.get("/api/v1/projects/default/audit", params={"action": action}).raise_for_status().json()["entries"]


def test_schedule_lifecycle_reaches_the_scheduler(beat):
    collector, apis, scheduler, agent, creds = beat
    viewer, operator, admin = apis["viewer"], apis["operator"], apis["admin"]

    # beat_schedule entries appear by themselves, read-only
    code = wait_until(lambda: by_name(viewer, "code-entry"), what="the code entry")
    assert code["source"] == "code" and code["scheduler"] == "file" and code["task"] == "proj.cleanup"
    assert code["schedule"] == {"kind": "interval", "every": 3600.0} and code["agent_id"] == creds["agent_id"]

    body = {"name": "nightly-report", "task": "proj.report", "schedule": {"kind": "crontab", "expr": "30 2 * * *"},
            "args": [7], "kwargs": {"password": "hunter2", "fmt": "pdf"}, "queue": "reports"}
    for role in ("viewer", "operator"):
        refused = apis[role].post(SCHEDULES, json=body)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden", refused.text
    created = admin.post(SCHEDULES, json=body)
    assert created.status_code == 201, created.text
    row = created.json()
    assert row["source"] == "z4j" and row["scheduler"] == "file" and row["enabled"] is True
    assert row["schedule"] == {"kind": "crontab", "minute": "30", "hour": "2", "day_of_week": "*",
                               "day_of_month": "*", "month_of_year": "*"}
    assert row["args"] == [7] and row["queue"] == "reports"
    assert row["kwargs"] == {"password": "[redacted]", "fmt": "pdf"} and row["redacted"] is True
    assert row["next_run_at"] > time.time()
    # the scheduler's own file has the real call; beat merges it on its next tick
    stored = read_file(scheduler.z4j_path)["nightly-report"]
    assert stored["kwargs"] == {"password": "hunter2", "fmt": "pdf"} and stored["options"] == {"queue": "reports"}
    scheduler.tick()
    assert scheduler.schedule["nightly-report"].task == "proj.report"

    again = admin.post(SCHEDULES, json=body)
    assert again.status_code == 409 and again.json()["code"] == "scheduler_refused"
    assert "already exists" in again.json()["message"]

    # edit: only what is given changes; the real kwargs stay in the store
    edited = admin.patch(f"{SCHEDULES}/{row['id']}", json={"args": [8], "schedule": {"kind": "interval", "every": 60}})
    assert edited.status_code == 200, edited.text
    assert edited.json()["args"] == [8] and edited.json()["schedule"] == {"kind": "interval", "every": 60.0}
    assert read_file(scheduler.z4j_path)["nightly-report"]["kwargs"]["password"] == "hunter2"
    refused = admin.patch(f"{SCHEDULES}/{row['id']}", json={"schedule": {"kind": "crontab", "minute": "99"}})
    assert refused.status_code == 400 and refused.json() == {
        "code": "bad_schedule", "message": "crontab minute '99': 99 is outside 0-59"}
    refused = admin.patch(f"{SCHEDULES}/{row['id']}", json={"colour": "red"})
    assert refused.status_code == 400 and "unknown field(s) colour" in refused.json()["message"]

    # disable / enable: operators may; beat skips a disabled entry
    assert viewer.post(f"{SCHEDULES}/{row['id']}/disable").status_code == 403
    disabled = operator.post(f"{SCHEDULES}/{row['id']}/disable")
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    assert disabled.json()["next_run_at"] is None
    scheduler.tick()
    entry = scheduler.schedule["nightly-report"]
    entry.last_run_at = entry.last_run_at.replace(year=2000)  # long overdue ...
    assert scheduler.is_due(entry) == (False, 5.0)  # ... but disabled
    scheduler.tick()
    assert scheduler.schedule["nightly-report"].total_run_count == 0
    assert operator.post(f"{SCHEDULES}/{row['id']}/enable").json()["enabled"] is True
    scheduler.tick()  # merges the change
    scheduler.tick()  # sends the overdue entry
    assert scheduler.schedule["nightly-report"].total_run_count == 1

    # code entries: read-only, but can be triggered
    refused = admin.patch(f"{SCHEDULES}/{code['id']}", json={"args": [1]})
    assert refused.status_code == 409 and refused.json()["code"] == "read_only"
    assert operator.post(f"{SCHEDULES}/{code['id']}/disable").status_code == 409

    # trigger-now: the task is sent with the stored call; a manual fire is recorded
    assert viewer.post(f"{SCHEDULES}/{row['id']}/trigger").status_code == 403
    fired = operator.post(f"{SCHEDULES}/{row['id']}/trigger")
    assert fired.status_code == 202, fired.text
    task_id = fired.json()["task_id"]
    fires = [f for f in viewer.get(f"{SCHEDULES}/{row['id']}/fires").json() if f["manual"]]
    assert [f["task_id"] for f in fires] == [task_id]
    assert fires[0]["actor"].startswith("token:")

    # beat's own fire (sent by the tick above) reaches the history, once
    auto = wait_until(lambda: [f for f in viewer.get(f"{SCHEDULES}/{row['id']}/fires").json() if not f["manual"]],
                      what="beat's fire")
    assert len(auto) == 1 and auto[0]["task"] == "proj.report" and auto[0]["task_id"]
    time.sleep(1.0)  # several syncs later: still once
    assert len(viewer.get(f"{SCHEDULES}/{row['id']}/fires").json()) == 2
    after = wait_until(lambda: (r := by_name(viewer, "nightly-report")) and r["total_run_count"] == 1 and r,
                       what="run count")
    assert after["last_run_at"] is not None

    # delete: gone from the store and from z4j
    assert operator.delete(f"{SCHEDULES}/{row['id']}").status_code == 403
    assert admin.delete(f"{SCHEDULES}/{row['id']}").status_code == 204
    assert "nightly-report" not in read_file(scheduler.z4j_path)
    assert by_name(viewer, "nightly-report") is None
    assert admin.get(f"{SCHEDULES}/{row['id']}").status_code == 404

    # every change is in the audit log, with who did it; refusals too
    entries = audit(operator, "schedule.*")
    seen = [(e["action"], e["outcome"]) for e in reversed(entries)]
    for wanted in [("schedule.create", "ok"), ("schedule.create", "refused"), ("schedule.edit", "ok"),
                   ("schedule.edit", "refused"), ("schedule.disable", "ok"), ("schedule.enable", "ok"),
                   ("schedule.trigger", "ok"), ("schedule.delete", "ok")]:
        assert wanted in seen, (wanted, seen)
    create = next(e for e in entries if e["action"] == "schedule.create" and e["outcome"] == "ok")
    assert create["target"] == "schedule:nightly-report" and create["actor"].startswith("token:")
    assert "hunter2" not in json.dumps(entries)
    trigger = next(e for e in entries if e["action"] == "schedule.trigger")
    assert trigger["detail"]["task_id"] == task_id and trigger["actor"].startswith("token:")


@on_one_db("beat")  # a client of the API tested above on both databases
def test_cli_verbs(beat):
    from tests.support.collector import mint_tokens, z4j

    collector, apis, scheduler, agent, creds = beat
    env = {"Z4J_API_TOKEN": mint_tokens(collector, "admin")["admin"], "Z4J_URL": collector.url, "COLUMNS": "200"}

    made = z4j("schedules", "create", "cli-job", "--task", "proj.add", "--every", "5m", "--args", "[1, 2]",
               "--queue", "fast", "--json", env=env)
    assert json.loads(made.stdout)["schedule"] == {"kind": "interval", "every": 300.0}
    assert read_file(scheduler.z4j_path)["cli-job"]["args"] == [1, 2]
    bad = z4j("schedules", "create", "cli-bad", "--task", "proj.add", "--cron", "* * 99 * *", env=env, check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip() == ("z4j: 400: crontab day_of_month '99': 99 is outside 1-31 (bad_schedule)")
    z4j("schedules", "edit", "cli-job", "--cron", "0 3 * * mon", env=env)
    z4j("schedules", "disable", "cli-job", env=env)
    listed = {r["name"]: r for r in json.loads(z4j("schedules", "list", "--json", env=env).stdout)}
    assert listed["cli-job"]["enabled"] is False
    assert listed["cli-job"]["schedule"]["day_of_week"] == "mon"
    table = z4j("schedules", "list", env=env).stdout
    assert "cli-job" in table and "cron 0 3 * * mon" in table
    task_id = json.loads(z4j("schedules", "trigger", "cli-job", "--json", env=env).stdout)["task_id"]
    assert task_id in z4j("schedules", "fires", "cli-job", env=env).stdout
    z4j("schedules", "delete", "cli-job", env=env)
    assert "cli-job" not in read_file(scheduler.z4j_path)


def test_changes_without_a_scheduler_agent_are_refused(beat):
    collector, apis, scheduler, agent, creds = beat
    admin = apis["admin"]
    wait_until(lambda: by_name(admin, "code-entry"), what="the first sync")
    agent.stop()
    wait_agent_connected(admin, "beat", connected=False)
    refused = admin.post(SCHEDULES, json={"name": "x", "task": "t", "schedule": {"kind": "interval", "every": 5}})
    assert refused.status_code == 409 and refused.json()["code"] == "no_agent", refused.text
    assert "x" not in read_file(scheduler.z4j_path)
    entry = audit(admin, "schedule.create")[0]
    assert entry["outcome"] == "refused" and "no connected agent" in json.dumps(entry["detail"])
    # the code entry synced before stays listed, and changing it still needs its agent
    code = by_name(admin, "code-entry")
    refused = admin.post(f"{SCHEDULES}/{code['id']}/trigger")
    assert refused.status_code == 409 and refused.json()["code"] == "agent_offline"
    assert code["agent_connected"] is False
    assert admin.get(SCHEDULES, params={"source": "nope"}).json()["code"] == "bad_source"
