"""Zero-code activation: `celery worker` starts the agent, `celery beat`/`inspect`/`purge` do not;
bad configuration costs one log line, never the worker; install(app) in a producer captures the publish."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.engines.celery.conftest import BOOTSTRAP_LINE, CELERY, Stack, Worker, celery_env, producer, run_celery, stored_replay
from tests.support.collector import running, wait_until
from tests.support.engine import ROOT
from z4j_agents.celery.call import open_call

pytestmark = pytest.mark.engine("celery")


@pytest.fixture
def sqlite_stack(redis_url, tmp_path):
    with running(f"sqlite:///{tmp_path}/z4j.db", tmp_path) as collector:
        yield Stack(collector, redis_url)


def test_only_celery_worker_starts_the_agent(sqlite_stack, tmp_path):
    stack = sqlite_stack
    env = stack.env()
    ping = run_celery(env, "inspect", "ping", "--timeout", "1")
    purge = run_celery(env, "purge", "-f")
    assert purge.returncode == 0, purge.stderr
    assert stack.connections("w1") == 0
    beat_log = tmp_path / "beat.log"
    with open(beat_log, "wb") as out:
        beat = subprocess.Popen([*CELERY, "beat", "-l", "info", "-s", str(tmp_path / "beat-schedule")], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            wait_until(lambda: "beat: Starting" in beat_log.read_text(errors="replace"), 30, "beat started")
            # beat starts its own schedule-only agent (z4j_agents.celery.beat), never the worker's
            wait_until(lambda: stack.connections("w1") == 1, 15, "beat's schedule agent connected")
            time.sleep(2)
        finally:
            beat.send_signal(signal.SIGTERM)
            beat.wait(20)
    for output in (ping.stdout + ping.stderr, purge.stdout + purge.stderr, beat_log.read_text(errors="replace")):
        assert BOOTSTRAP_LINE not in output
    assert "z4j beat bootstrap: agent runtime started" in beat_log.read_text(errors="replace")
    assert stack.connections("w1") == 1  # beat's schedule agent only
    assert stack.workers() == {}

    # The same environment in `celery worker` does start it (so the checks above can fail).
    worker = Worker(env, tmp_path, pool="solo", name="act")
    try:
        worker.start()
        assert worker.log().count(BOOTSTRAP_LINE) == 1
        wait_until(lambda: stack.connections("w1") == 2, 15, "the worker's agent connected")
    finally:
        worker.stop()


def test_missing_config_is_one_line_and_the_worker_still_runs(redis_url, tmp_path):
    env = celery_env(redis_url, {"Z4J_BRAIN_URL": "http://127.0.0.1:9", "Z4J_HMAC_SECRET": "x"})
    worker = Worker(env, tmp_path, pool="solo", name="nocfg")
    try:
        worker.start()
        lines = [l for l in worker.log().splitlines() if "z4j" in l]
        assert len(lines) == 1, lines
        assert "z4j worker bootstrap: agent not started: missing environment variable(s): Z4J_TOKEN" in lines[0]
        task_id = producer(redis_url).send_task("proj.add", (2, 2)).id
        worker.wait_log(f"Task proj.add[{task_id}] succeeded", 20)
    finally:
        assert worker.stop() == 0


def test_install_in_a_producer_captures_the_publish(sqlite_stack):
    stack = sqlite_stack
    script = (
        "import tests.engines.celery.proj as proj\n"
        "from z4j_agents.celery import current_agent\n"
        "r = proj.login.apply_async(('bob',), {'db_password': 'hunter2'}, queue='idle', countdown=3600)\n"
        "assert current_agent().runtime.flush(20)\n"
        "print(r.id)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=stack.env(Z4J_TEST_INSTALL="1"), cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip().splitlines()[-1]
    task = stack.wait_task(task_id, "pending")
    assert task["queue"] == "idle" and task["name"] == "proj.login" and task["sent_at"] is not None
    assert task["eta"] is not None and task["eta"] > time.time() + 3000
    assert task["kwargs"] == {"db_password": "[redacted]"} and task["replayable"] is True
    assert task["root_id"] == task_id and task["parent_id"] is None
    call = open_call(stack.creds["hmac_secret"], stored_replay(stack.collector.db_url, task_id))
    assert call["args"] == ["bob"] and call["kwargs"] == {"db_password": "hunter2"} and call["queue"] == "idle"
