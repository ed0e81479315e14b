"""RQ actions: the commands an RQ worker's agent runs for the collector.

RQ keeps every job's exact call in its job hash (``rq:job:<id>``: function,
arguments as the job's serializer wrote them, options), so no sealed copy is
needed: the collector sends none (services/actions.py ``STORED_CALL_ENGINES``)
and the agent reads the job from Redis.

* ``rq.retry {task_id, name?, queue?}``: a **new job** (new id) with the same
  function, args and kwargs (deserialized and serialized again by the job's
  own serializer: the same Python objects), timeout, TTLs, description and
  meta, on the same queue; ``meta.z4j_retry_of`` links it to the old one, which
  keeps its history and leaves the failed registry. Refused when the hash has
  expired (``failure_ttl``/``result_ttl``).
* ``rq.cancel {task_id, terminate}``: a queued, deferred or scheduled job is
  canceled (``job.cancel()``, the canceled registry); a running one only with
  ``terminate``, through ``rq.command.send_stop_job_command`` (its horse is
  killed; the job ends ``stopped``).
* ``rq.purge {queue, name?, older_than_s?, dead_letters?}``: ``queue.empty()``
  (jobs deleted), or only the jobs of one function and/or enqueued before an
  age; ``dead_letters`` does the same to the failed registry.
* ``rq.requeue_dead {queue, all, task_ids?}``: RQ's own requeue of failed jobs
  (``FailedJobRegistry.requeue``: same id, back on the queue).

Handlers run on the agent's command threads with the agent's own Redis
client, never in a job; a refusal is one ``CommandError`` line.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from z4j_agents.rq.agent import ENGINE, emit
from z4j_agents.rq.capture import RETRY_OF_META, ROOT_META, sent_event, status, task_event, ts
from z4j_agents.runtime import CommandError

log = logging.getLogger("z4j.rq.actions")

MAX_IDS = 10_000
SCAN_CHUNK = 500
WAITING = ("queued", "deferred", "scheduled")
_COPIED_META_DROP = (RETRY_OF_META, "z4j_retries")


def register(agent: Any) -> None:
    actions = RQActions(agent)
    for verb in ("retry", "cancel", "purge", "requeue_dead"):
        agent.on_command(f"rq.{verb}", getattr(actions, verb))


class RQActions:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    @property
    def connection(self) -> Any:
        return self.agent.connection

    def _job_class(self) -> Any:
        worker = self.agent.worker
        if worker is not None:
            return worker.job_class
        from rq.job import Job

        return Job

    def _queue(self, name: str) -> Any:
        from rq import Queue

        worker = self.agent.worker
        queue_class = worker.queue_class if worker is not None else Queue
        kwargs: dict[str, Any] = {"connection": self.connection, "job_class": self._job_class()}
        if worker is not None:
            kwargs["serializer"] = worker.serializer
        return queue_class(name, **kwargs)

    def _fetch(self, job_id: str) -> Any:
        from rq.exceptions import NoSuchJobError

        worker = self.agent.worker
        try:
            return self._job_class().fetch(job_id, connection=self.connection,
                                           serializer=worker.serializer if worker is not None else None)
        except NoSuchJobError:
            return None

    # ------------------------------------------------------------ retry

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        old_id = _str(args, "task_id")
        old = self._fetch(old_id)
        if old is None:
            raise CommandError(f"job {old_id} is no longer in Redis (its failure_ttl or result_ttl ran out); "
                               "nothing was enqueued")
        try:
            func, call_args, call_kwargs = old.func_name, list(old.args), dict(old.kwargs)
        except Exception as exc:  # noqa: BLE001 - the job's payload cannot be read here
            raise CommandError(f"cannot read the call of job {old_id}: {type(exc).__name__}: {exc}; "
                               "nothing was enqueued") from None
        engine_state = status(old)
        if engine_state in ("started",) + WAITING:
            raise CommandError(f"job {old_id} is {engine_state}: it has not finished, nothing was enqueued")
        meta = {k: v for k, v in (old.meta or {}).items() if k not in _COPIED_META_DROP}
        meta[RETRY_OF_META] = old_id
        if meta.get(ROOT_META) in (None, old_id):
            meta.pop(ROOT_META, None)
        queue = self._queue(old.origin)
        new_id = str(uuid.uuid4())
        options: dict[str, Any] = {"timeout": old.timeout, "result_ttl": old.result_ttl, "ttl": old.ttl,
                                   "failure_ttl": old.failure_ttl, "description": old.description}
        job = queue.enqueue_call(func, args=call_args, kwargs=call_kwargs, job_id=new_id, meta=meta,
                                 **{k: v for k, v in options.items() if v is not None})
        try:
            queue.failed_job_registry.remove(old_id)  # dealt with: not requeued a second time from there
        except Exception:  # noqa: BLE001 - not there (finished, stopped) is fine
            pass
        emit(sent_event(job, queue.name))
        log.info("z4j rq: retried %s as %s (%s)", old_id, new_id, func)
        return {"new_task_id": new_id, "retry_of": old_id, "name": func, "queue": queue.name}

    # ------------------------------------------------------------ cancel

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        from rq.command import send_stop_job_command

        job_id = _str(args, "task_id")
        terminate = bool(args.get("terminate"))
        job = self._fetch(job_id)
        if job is None:
            raise CommandError(f"job {job_id} is not in Redis (never enqueued, or expired); nothing changed")
        engine_state = status(job) or "unknown"
        if engine_state in WAITING:
            job.cancel()
            emit(task_event(job_id, "revoked", "canceled", name=job.func_name, queue=job.origin,
                            extra={"was": engine_state}))
            return {"task_id": job_id, "terminate": terminate, "was": engine_state, "now": "canceled"}
        if engine_state == "started":
            if not terminate:
                raise CommandError(f"job {job_id} is running: stopping it needs terminate; nothing changed")
            worker = self.agent.worker
            try:
                send_stop_job_command(self.connection, job_id,
                                      **({"serializer": worker.serializer} if worker is not None else {}))
            except Exception as exc:  # noqa: BLE001 - e.g. InvalidJobOperation: it just finished
                raise CommandError(f"cannot stop job {job_id}: {exc}; nothing changed") from None
            return {"task_id": job_id, "terminate": True, "was": "started", "now": "stop sent",
                    "worker": job.worker_name}
        raise CommandError(f"job {job_id} is already {engine_state}; nothing to cancel")

    # ------------------------------------------------------------ purge

    def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(_str(args, "queue"))
        name = args.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise CommandError("name must be a function name like app.jobs.send_mail")
        older = args.get("older_than_s")
        if older is not None and (isinstance(older, bool) or not isinstance(older, (int, float)) or older <= 0):
            raise CommandError("older_than_s must be a positive number of seconds")
        cutoff = time.time() - float(older) if older is not None else None
        out: dict[str, Any] = {"queue": queue.name}
        if name is None and cutoff is None:
            out["purged"] = int(queue.empty() or 0)
        else:
            out["purged"], out["scanned"] = self._remove(queue, queue.get_job_ids, name, cutoff,
                                                         lambda job, pipe: queue.remove(job, pipeline=pipe))
        if args.get("dead_letters"):
            registry = queue.failed_job_registry
            if name is None and cutoff is None:
                ids = registry.get_job_ids()
                for begin in range(0, len(ids), SCAN_CHUNK):
                    with self.connection.pipeline() as pipe:
                        for job_id in ids[begin:begin + SCAN_CHUNK]:
                            registry.remove(job_id, pipeline=pipe, delete_job=True)
                        pipe.execute()
                out["dead_letters_purged"] = len(ids)
            else:
                out["dead_letters_purged"], _ = self._remove(
                    queue, registry.get_job_ids, name, cutoff,
                    lambda job, pipe: registry.remove(job, pipeline=pipe), ended=True)
        log.warning("z4j rq: purged queue %s: %s (name=%s older_than_s=%s)", queue.name, out, name, older)
        return out

    def _remove(self, queue: Any, ids_of: Any, name: str | None, cutoff: float | None, remove: Any,
                ended: bool = False) -> tuple[int, int]:
        """Delete the jobs of ``ids_of()`` matching a function name and/or an age
        (enqueued, or for dead letters ended, before ``cutoff``)."""
        ids = ids_of()
        removed = 0
        for begin in range(0, len(ids), SCAN_CHUNK):
            chunk = ids[begin:begin + SCAN_CHUNK]
            jobs = self._job_class().fetch_many(chunk, connection=self.connection, serializer=queue.serializer)
            with self.connection.pipeline() as pipe:
                for job in jobs:
                    if job is None:
                        continue
                    if name is not None and job.func_name != name:
                        continue
                    if cutoff is not None:
                        when = ts(job.ended_at if ended else job.enqueued_at) or ts(job.created_at)
                        if when is None or when >= cutoff:
                            continue
                    remove(job, pipe)
                    job.delete(pipeline=pipe, remove_from_queue=False)
                    removed += 1
                pipe.execute()
        return removed, len(ids)

    # ------------------------------------------------------------ dead letters

    def requeue_dead(self, args: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(_str(args, "queue"))
        registry = queue.failed_job_registry
        present = set(registry.get_job_ids())
        if args.get("all"):
            wanted = sorted(present)
        else:
            wanted = args.get("task_ids")
            if not isinstance(wanted, list) or not wanted or len(wanted) > MAX_IDS \
                    or not all(isinstance(i, str) and i for i in wanted):
                raise CommandError(f"task_ids must be 1 to {MAX_IDS} job ids (or all=true)")
        requeued: list[str] = []
        missing: list[str] = []
        for job_id in wanted:
            if job_id not in present:
                missing.append(job_id)
                continue
            try:
                job = registry.requeue(job_id)
            except Exception as exc:  # noqa: BLE001 - gone meanwhile (expired, requeued by someone else)
                log.info("z4j rq: could not requeue %s: %s", job_id, exc)
                missing.append(job_id)
                continue
            requeued.append(job_id)
            emit(task_event(job_id, "sent", status(job) or "queued", name=job.func_name, queue=queue.name,
                            extra={"requeued": True}))
        return {"queue": queue.name, "requeued": len(requeued), "task_ids": requeued, "missing": missing,
                "engine": ENGINE}


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key) if isinstance(args, dict) else None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise CommandError(f"{key} is required (1 to 255 characters)")
    return value
