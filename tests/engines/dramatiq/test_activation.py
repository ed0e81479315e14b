"""Activation: bad configuration costs one log line per worker process, never the worker (the rest of
activation is in test_capture.py, which shares its collector)."""

from __future__ import annotations

import pytest

from tests.engines.dramatiq.conftest import Worker, dramatiq_env, producer, send

pytestmark = pytest.mark.engine("dramatiq")


def test_missing_config_is_one_line_per_process_and_the_worker_still_runs(redis_url, tmp_path):
    env = dramatiq_env(redis_url, {"Z4J_BRAIN_URL": "http://127.0.0.1:9", "Z4J_HMAC_SECRET": "x"})
    worker = Worker(env, tmp_path, processes=2, threads=1, name="nocfg")
    try:
        worker.start()
        lines = [line for line in worker.log().splitlines() if "z4j" in line]
        assert len(lines) == 2, lines
        for line in lines:
            assert "z4j worker bootstrap: agent not started: missing environment variable(s): Z4J_TOKEN; " \
                   "the worker runs without z4j" in line
        broker = producer(redis_url)
        message = send(broker, "add", 2, 2)
        assert message.get_result(backend=broker.get_results_backend(), block=True, timeout=20_000) == 4
    finally:
        assert worker.stop() == 0
