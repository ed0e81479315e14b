"""Activation without a usable configuration: one line, and arq runs its jobs without z4j.

(The checklist module shows the agent starting: the bootstrap line, the
worker online, jobs captured.)
"""

from __future__ import annotations

import asyncio

import pytest

from tests.engines.arq.conftest import Worker, arq_env

pytestmark = pytest.mark.engine("arq")


def _result(redis_url: str, function: str, *args, queue: str) -> object:
    from arq import create_pool
    from arq.connections import RedisSettings

    async def go() -> object:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            job = await pool.enqueue_job(function, *args, _queue_name=queue)
            return await job.result(timeout=30, poll_delay=0.1)
        finally:
            await pool.aclose()

    return asyncio.run(go())


def test_a_bad_configuration_costs_one_line_and_the_worker_runs(redis_url, tmp_path):
    missing = Worker(arq_env(redis_url), tmp_path, queue="q-missing", name="missing")
    bad = Worker(arq_env(redis_url, {"Z4J_BRAIN_URL": "http://127.0.0.1:9", "Z4J_TOKEN": "t",
                                     "Z4J_HMAC_SECRET": "s"}, Z4J_ARQ_HEARTBEAT_S="soon"),
                 tmp_path, queue="q-bad", name="bad")
    try:
        missing.start(wait_for="z4j worker bootstrap: agent not started")
        bad.start(wait_for="z4j worker bootstrap: agent not started")
        for worker in (missing, bad):
            assert _result(redis_url, "add", 2, 3, queue=worker.queue) == 5
            assert _result(redis_url, "app_ctx", queue=worker.queue) is True  # the app's on_startup still ran
        assert ("z4j worker bootstrap: agent not started: missing environment variable(s): Z4J_BRAIN_URL, "
                "Z4J_TOKEN, Z4J_HMAC_SECRET; the worker runs without z4j") in missing.log()
        assert ("z4j worker bootstrap: agent not started: Z4J_ARQ_HEARTBEAT_S must be a number of seconds, "
                "got 'soon'; the worker runs without z4j") in bad.log()
        for worker in (missing, bad):
            assert sum("z4j" in line for line in worker.log().splitlines()) == 1 and "Traceback" not in worker.log()
    finally:
        missing.kill()
        bad.kill()


def test_install_chains_the_settings_hooks_once():
    from z4j_agents.arq import install

    async def mine(ctx):
        ctx["mine"] = True

    settings = {"functions": [], "on_startup": mine}
    assert install(settings, capture_enqueue=False) is settings
    wrapped = settings["on_startup"]
    install(settings, capture_enqueue=False)
    assert settings["on_startup"] is wrapped and wrapped is not mine and settings["on_shutdown"].__z4j__

    class Settings:
        functions = []

    install(Settings, capture_enqueue=False)
    assert vars(Settings)["on_startup"].__z4j__  # in the class's own __dict__: what arq reads
