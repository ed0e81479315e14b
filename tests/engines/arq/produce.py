"""A producer process with z4j installed: enqueues the calls given as JSON and prints the job ids.

    python -m tests.engines.arq.produce '[{"function": "add", "args": [1, 2], "queue": "idle"}]'

``kwargs`` values of the form ``{"$datetime": "<iso>"}`` become datetimes
(exact types must survive a retry).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime

from arq import create_pool
from arq.connections import RedisSettings

from z4j_agents.arq import current_agent, install


def _value(v):
    if isinstance(v, dict) and set(v) == {"$datetime"}:
        return datetime.fromisoformat(v["$datetime"])
    return v


async def main(calls: list[dict]) -> list[str]:
    install()
    pool = await create_pool(RedisSettings.from_dsn(os.environ["Z4J_TEST_REDIS_URL"]))
    ids = []
    try:
        for call in calls:
            kwargs = {k: _value(v) for k, v in (call.get("kwargs") or {}).items()}
            extra = {"_defer_by": call["defer_by"]} if call.get("defer_by") else {}
            job = await pool.enqueue_job(call["function"], *call.get("args", []),
                                         _queue_name=call.get("queue", "arq:queue"), **extra, **kwargs)
            ids.append(job.job_id)
    finally:
        await pool.aclose()
    return ids


if __name__ == "__main__":
    job_ids = asyncio.run(main(json.loads(sys.argv[1])))
    agent = current_agent()
    if agent is None or not agent.stop(15.0):
        sys.exit("z4j: the producer's events were not delivered")
    print(json.dumps(job_ids))
