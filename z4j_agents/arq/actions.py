"""arq actions: the commands an arq worker's agent runs for the collector.

* ``arq.retry {task_id, replay}``: opens the call this agent sealed (at
  enqueue or at start) and enqueues it again under a new job id, on the same
  queue, with the exact arguments; the new job's ``sent`` event carries
  ``extra.retry_of``. Never from the redacted display copies.
* ``arq.cancel {task_id, terminate, queue?}``: a queued or deferred job is
  taken out of the queue (atomically, only while no worker has started it)
  and gets arq's own "aborted" result; a running one is aborted through
  ``arq:abort`` when the worker runs with ``allow_abort_jobs``, refused with
  the reason otherwise.
* ``arq.purge {queue, name?, older_than_s?}``: removes the queue's waiting
  jobs (zset entry and job data), all of them or those matching a function
  name or an enqueue age; jobs in progress are left alone.
* ``arq.requeue_dead``: refused, arq keeps no dead letters.
* ``arq.probe {task_ids}``: what Redis knows of each job (status and result).

Handlers run on the agent's command threads; the Redis work runs on the
agent's own loop and connection (agent.py ``call``), never the worker's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from z4j_agents.arq import capture
from z4j_agents.runtime import CommandError
from z4j_agents.sealed_call import open_from_command

from arq.constants import abort_jobs_ss as ABORT
from arq.constants import in_progress_key_prefix as IN_PROGRESS
from arq.constants import job_key_prefix as JOB
from arq.constants import result_key_prefix as RESULT

log = logging.getLogger("z4j.arq.actions")

REDIS_TIMEOUT_S = 15.0
ABORT_WAIT_S = 5.0
MAX_IDS = 5000
SCAN_CHUNK = 500

# Removes waiting jobs only: a job whose in-progress key exists is running.
# Writing and deleting the in-progress key makes a worker's WATCH on it fail,
# so a worker about to start one of these jobs skips it instead of finding
# its data gone.
_REMOVE = """
local removed = {}
for i, id in ipairs(ARGV) do
  local ipk = KEYS[2] .. id
  if redis.call('exists', ipk) == 0 and redis.call('zscore', KEYS[1], id) then
    redis.call('set', ipk, '1', 'PX', 1000)
    redis.call('del', ipk)
    redis.call('zrem', KEYS[1], id)
    redis.call('del', KEYS[3] .. id)
    removed[#removed + 1] = id
  end
end
return removed
"""


def register(agent: Any) -> None:
    actions = ArqActions(agent)
    for verb in ("retry", "cancel", "purge", "requeue_dead", "probe"):
        agent.on_command(f"arq.{verb}", getattr(actions, verb))


class ArqActions:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    @property
    def worker(self) -> Any:
        return self.agent.worker

    def _run(self, make: Any, what: str) -> Any:
        return self.agent.call(make, REDIS_TIMEOUT_S, what)

    # ------------------------------------------------------------ retry

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        from z4j_agents.arq.call import open_call

        old_id = _str(args, "task_id")
        deserializer = self.worker.job_deserializer if self.worker is not None else None
        call = open_from_command(args, old_id, lambda blob: open_call(self.agent.secret, blob, deserializer))
        new_id = uuid.uuid4().hex
        queue = call.get("queue") or (self.worker.queue_name if self.worker is not None else None)
        function, call_args, call_kwargs = call["function"], call["args"], call["kwargs"]

        async def enqueue() -> Any:
            pool = await self.agent.pool()
            return await capture.state.original_enqueue(pool, function, *call_args, _job_id=new_id,
                                                        _queue_name=queue, **call_kwargs)

        if self._run(enqueue, f"retry {old_id}") is None:
            raise CommandError(f"arq refused job id {new_id} (it exists already); nothing was enqueued")
        self._sent(new_id, function, queue, call_args, call_kwargs, call["job"], {"retry_of": old_id})
        log.info("z4j arq: retried %s as %s (%s)", old_id, new_id, function)
        return {"new_task_id": new_id, "retry_of": old_id, "name": function, "queue": queue}

    def _sent(self, job_id: str, function: str, queue: str | None, args: tuple, kwargs: dict, job: bytes,
              extra: dict[str, Any]) -> None:
        capture.note("sent", job_id, {"name": function, "queue": queue, "args": list(args), "kwargs": kwargs,
                                      "engine_state": "queued", "extra": extra}, (function, queue, job))

    # ------------------------------------------------------------ cancel

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        job_id = _str(args, "task_id")
        terminate = bool(args.get("terminate"))
        worker = self.worker
        queue = args.get("queue") if isinstance(args.get("queue"), str) and args.get("queue") else None
        queue = queue or (worker.queue_name if worker is not None else None)

        async def look() -> tuple[str, list[str]]:
            pool = await self.agent.pool()
            status = await _status(pool, job_id, queue)
            removed: list[str] = []
            if status in ("queued", "deferred"):
                raw = await pool.get(JOB + job_id)
                removed = await _remove(pool, queue, [job_id])
                if removed:
                    await _write_aborted(pool, worker, job_id, queue, raw)
                else:
                    status = await _status(pool, job_id, queue)
            return status, removed

        status, removed = self._run(look, f"cancel {job_id}")
        if removed:
            capture.note("revoked", job_id, {"engine_state": "complete", "extra": {"aborted": True,
                                                                                   "running": False}})
            return {"task_id": job_id, "terminate": terminate, "removed_from_queue": 1, "status": "aborted"}
        if status == "complete":
            raise CommandError(f"job {job_id} has already finished; nothing to cancel")
        if status == "not_found":
            raise CommandError(f"job {job_id} is not in Redis (finished and its result expired, or never "
                               f"enqueued on {queue}); nothing changed")
        # in progress
        if not terminate:
            raise CommandError(f"job {job_id} is running: pass terminate to abort it")
        if worker is None or not worker.allow_abort_jobs:
            raise CommandError(f"job {job_id} is running and this arq worker does not allow aborting jobs: set "
                               "allow_abort_jobs = True in its WorkerSettings; nothing changed")

        async def abort() -> str:
            pool = await self.agent.pool()
            await pool.zadd(ABORT, {job_id: int(time.time() * 1000)})
            deadline = time.monotonic() + ABORT_WAIT_S
            while time.monotonic() < deadline:
                status = await _status(pool, job_id, queue)
                if status != "in_progress":
                    return status
                await asyncio.sleep(0.1)
            return "in_progress"

        after = self.agent.call(abort, REDIS_TIMEOUT_S + ABORT_WAIT_S, f"abort {job_id}")
        return {"task_id": job_id, "terminate": True, "removed_from_queue": 0,
                "status": "aborted" if after != "in_progress" else "abort requested",
                **({"note": f"the worker had not stopped the job after {ABORT_WAIT_S:.0f} s; arq aborts it "
                            "at the worker's next poll if it is still running"} if after == "in_progress" else {})}

    # ------------------------------------------------------------ purge

    def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = _str(args, "queue")
        if args.get("dead_letters"):
            raise CommandError("arq keeps no dead letters (a failed job keeps only its result, for keep_result "
                               "seconds); nothing was purged")
        name = args.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise CommandError("name must be a function name")
        older_than = args.get("older_than_s")
        if older_than is not None and (isinstance(older_than, bool) or not isinstance(older_than, (int, float))
                                       or not older_than > 0):
            raise CommandError("older_than_s must be a positive number of seconds")
        cutoff_ms = (time.time() - float(older_than)) * 1000 if older_than is not None else None
        deserializer = self.worker.job_deserializer if self.worker is not None else None

        async def purge() -> dict[str, Any]:
            from arq.jobs import deserialize_job_raw

            pool = await self.agent.pool()
            ids = [m.decode() if isinstance(m, bytes) else m for m in await pool.zrange(queue, 0, -1)]
            scanned, unreadable, purged, ids_purged = len(ids), 0, 0, []
            for start in range(0, len(ids), SCAN_CHUNK):
                chunk = ids[start:start + SCAN_CHUNK]
                if name is not None or cutoff_ms is not None:
                    raws = await pool.mget([JOB + i for i in chunk])
                    picked = []
                    for job_id, raw in zip(chunk, raws):
                        if raw is None:
                            continue
                        try:
                            function, _, _, _, enqueued_ms = deserialize_job_raw(raw, deserializer=deserializer)
                        except Exception:  # noqa: BLE001 - cannot tell what it is: keep it
                            unreadable += 1
                            continue
                        if name is not None and function != name:
                            continue
                        if cutoff_ms is not None and not enqueued_ms < cutoff_ms:
                            continue
                        picked.append(job_id)
                    chunk = picked
                if chunk:
                    removed = await _remove(pool, queue, chunk)
                    purged += len(removed)
                    ids_purged.extend(removed)
            return {"queue": queue, "purged": purged, "scanned": scanned, "kept_unreadable": unreadable,
                    "task_ids": ids_purged}

        result = self._run(purge, f"purge {queue}")
        now = time.time()
        for job_id in result.pop("task_ids"):
            capture.note("revoked", job_id, {"engine_state": "not_found", "extra": {"purged": True}}, ts=now)
        log.warning("z4j arq: purged %d of %d job(s) of queue %s (name=%s older_than_s=%s)",
                    result["purged"], result["scanned"], queue, name, older_than)
        return result

    def requeue_dead(self, args: dict[str, Any]) -> dict[str, Any]:
        raise CommandError("arq keeps no dead letters (a failed job keeps only its result, for keep_result "
                           "seconds): retry failed jobs one by one or with bulk-retry; nothing was requeued")

    # ------------------------------------------------------------ probe

    def probe(self, args: dict[str, Any]) -> dict[str, Any]:
        ids = args.get("task_ids") if isinstance(args, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids):
            raise CommandError("task_ids must be a list of task ids")
        if len(ids) > MAX_IDS:
            raise CommandError(f"at most {MAX_IDS} task ids per probe, got {len(ids)}")
        redactor = self.agent.runtime.redactor
        deserializer = self.worker.job_deserializer if self.worker is not None else None

        async def probe() -> dict[str, Any]:
            pool = await self.agent.pool()
            out: dict[str, Any] = {}
            for start in range(0, len(ids), SCAN_CHUNK):
                chunk = ids[start:start + SCAN_CHUNK]
                async with pool.pipeline(transaction=False) as pipe:
                    for job_id in chunk:
                        pipe.get(RESULT + job_id)
                        pipe.exists(IN_PROGRESS + job_id)
                        pipe.exists(JOB + job_id)
                    replies = await pipe.execute()
                for n, job_id in enumerate(chunk):
                    raw, running, waiting = replies[3 * n:3 * n + 3]
                    try:
                        out[job_id] = _probe_one(raw, running, waiting, deserializer, redactor)
                    except Exception as exc:  # noqa: BLE001 - that job's answer only
                        out[job_id] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            return out

        return {"tasks": self._run(probe, "probe jobs"), "backend": "redis"}


def _probe_one(raw: Any, running: Any, waiting: Any, deserializer: Any, redactor: Any) -> dict[str, Any]:
    if raw:
        from arq.jobs import deserialize_result

        info = deserialize_result(raw, deserializer=deserializer)
        answer: dict[str, Any] = {"engine_state": "complete", "date_done": info.finish_time.timestamp()}
        if info.success:
            answer.update(state="success", result=redactor.redact(info.result, info.function)[0])
        elif isinstance(info.result, asyncio.CancelledError):
            answer.update(state="revoked")
        else:
            answer.update(state="failure",
                          exception=str(redactor.redact(capture._describe(info.result), info.function)[0])[:4000])
        return answer
    if running:
        return {"state": "started", "engine_state": "in_progress"}
    if waiting:
        # still in Redis, not running: arq runs it (again) when a worker polls
        return {"state": "retry", "engine_state": "queued"}
    return {"state": "unknown", "engine_state": "not_found"}


async def _status(pool: Any, job_id: str, queue: str | None) -> str:
    from arq.jobs import Job

    return str((await Job(job_id, pool, _queue_name=queue or pool.default_queue_name).status()).value)


async def _remove(pool: Any, queue: str, ids: list[str]) -> list[str]:
    removed = await pool.eval(_REMOVE, 3, queue, IN_PROGRESS, JOB, *ids)
    return [r.decode() if isinstance(r, bytes) else r for r in removed or []]


async def _write_aborted(pool: Any, worker: Any, job_id: str, queue: str | None, raw: Any) -> None:
    """arq's own result for a job aborted before it started (what the worker
    writes itself), so ``Job.result()`` raises CancelledError as arq's abort does."""
    from arq.jobs import deserialize_job_raw, serialize_result

    keep_s = worker.keep_result_s if worker is not None else 3600
    if worker is not None and worker.keep_result_forever:
        keep_s = None
    elif not keep_s:
        return
    now_ms = int(time.time() * 1000)
    function, args, kwargs, enqueued_ms = "<unknown>", (), {}, now_ms
    try:
        function, args, kwargs, _, enqueued_ms = deserialize_job_raw(raw, deserializer=pool.job_deserializer)
    except Exception:  # noqa: BLE001 - the result says aborted all the same
        pass
    data = serialize_result(function, args, kwargs, 1, enqueued_ms, False, asyncio.CancelledError(), now_ms, now_ms,
                            f"{job_id}:{function}", queue or pool.default_queue_name, job_id=job_id,
                            serializer=pool.job_serializer)
    if data is not None:
        await pool.set(RESULT + job_id, data, px=None if keep_s is None else int(keep_s * 1000))


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(f"{key} is required")
    return value
