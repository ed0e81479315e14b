"""``Z4JMiddleware``: taskiq's middleware hooks as z4j task events.

    broker.add_middlewares(Z4JMiddleware())      # settings from Z4J_* variables

Every hook is a guest on the host's asyncio loop: it is synchronous, builds
one small event and hands it to the agent's bounded queue (constant time),
and never raises (each body is wrapped and logged). Redaction, encoding and
the network run on the agent's thread.

=============  ===============================  ===========================
kind           hook                             process
=============  ===============================  ===========================
sent           pre_send (stamps the labels),    producer, scheduler, or a
               post_send (the event)            worker kicking a task
started        pre_execute                      worker
succeeded      post_execute (not is_err)        worker
failed         on_error (no retry will follow)  worker
retried        on_error (a retry middleware     worker
               will kick it again)
revoked        on_error (CancelledError after   worker
               a z4j cancel)
=============  ===============================  ===========================

Labels the middleware adds to a message (visible to the task in
``Context.message.labels``): ``z4j_sent_at`` (publish time, for purge by
age), ``z4j_parent_id``/``z4j_root_id`` (a task kicked from inside a task),
``z4j_retry_of`` (a retry made through z4j).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from typing import Any

from taskiq.abc.middleware import TaskiqMiddleware

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig, ConfigError
from z4j_agents.failure import exception_text, traceback_text
from z4j_agents.taskiq import brokers
from z4j_agents.taskiq.agent import CLIENT, ENGINE, SCHEDULER, WORKER, TaskiqAgent, options_from_env
from z4j_agents.taskiq.call import seal_message

log = logging.getLogger("z4j.taskiq")
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
SCHEDULER_LINE = "z4j scheduler bootstrap: agent runtime started"
# taskiq gives the broker's shutdown (our middleware's included) --shutdown-timeout,
# 5 s by default, then the process exits whatever is still in flight.
SHUTDOWN_FLUSH_S = 4.0

SENT_AT, PARENT, ROOT, RETRY_OF = "z4j_sent_at", "z4j_parent_id", "z4j_root_id", "z4j_retry_of"
Z4J_LABELS = (SENT_AT, PARENT, ROOT, RETRY_OF)

current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("z4j_taskiq_current", default=None)
"""(task id, root id) of the task running in this asyncio context: kicks from it are its children."""
manual_fire: contextvars.ContextVar[str | None] = contextvars.ContextVar("z4j_taskiq_manual_fire", default=None)
"""Set while z4j's trigger-now kicks a schedule's task (the fire is recorded as manual, by whom)."""


def _label_types() -> tuple[int, int]:
    from taskiq.labels import LabelType

    return int(LabelType.FLOAT), int(LabelType.STR)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


class Z4JMiddleware(TaskiqMiddleware):
    """z4j's agent for taskiq. ``config``/``redactor`` default to the
    environment and the default rules; ``heartbeat_s`` (10), ``queue_depth_s``
    (5, 0 turns sampling off) and ``queues`` (more queues to sample) tune a
    worker; ``scheduler`` names the ``TaskiqScheduler`` whose sources z4j
    manages (found by itself in ``taskiq scheduler`` otherwise)."""

    def __init__(self, config: AgentConfig | None = None, *, redactor: Any = None, heartbeat_s: float | None = None,
                 queue_depth_s: float | None = None, queues: list[str] | tuple[str, ...] | None = None,
                 scheduler: Any = None) -> None:
        super().__init__()
        self._config = config
        self._redactor = redactor
        self._options = {k: v for k, v in (("heartbeat_s", heartbeat_s), ("queue_depth_s", queue_depth_s))
                         if v is not None}
        if queues is not None:
            self._options["queues"] = tuple(queues)
        self.scheduler = scheduler
        self.agent: TaskiqAgent | None = None
        self.schedules: Any = None
        self._pid: int | None = None

    def use_scheduler(self, scheduler: Any) -> Z4JMiddleware:
        """Name the scheduler whose sources z4j lists and changes (returns self)."""
        self.scheduler = scheduler
        return self

    # ------------------------------------------------------------ lifecycle

    def _role(self) -> str:
        broker = self.broker
        if getattr(broker, "is_worker_process", False):
            return WORKER
        if getattr(broker, "is_scheduler_process", False):
            return SCHEDULER
        return CLIENT

    def _ensure(self) -> TaskiqAgent | None:
        """This process's agent, built at its first use (once per process; never raises)."""
        pid = os.getpid()
        if self._pid == pid:
            return self.agent
        self._pid, self.agent, self.schedules = pid, None, None
        role = self._role()
        prefix = "z4j scheduler bootstrap" if role == SCHEDULER else (
            "z4j worker bootstrap" if role == WORKER else "z4j producer bootstrap")
        blog = logging.getLogger(f"z4j.taskiq.{role}_bootstrap")
        try:
            config = self._config or AgentConfig.from_env()
            options = {**options_from_env(), **self._options}
            agent = TaskiqAgent(self.broker, config, role, redactor=self._redactor, **options)
            from z4j_agents.taskiq import actions

            actions.register(agent, self)
            if role == SCHEDULER:
                from z4j_agents.taskiq.schedules import ScheduleAdapter, find_scheduler

                scheduler = self.scheduler or find_scheduler(self.broker)
                if scheduler is None:
                    blog.warning("%s: no TaskiqScheduler found for this broker: schedules are not managed "
                                 "(pass Z4JMiddleware(scheduler=...) or call use_scheduler)", prefix)
                else:
                    self.schedules = ScheduleAdapter(agent, scheduler)
                    self.schedules.register()
            agent.runtime.start()
        except ConfigError as exc:
            blog.error("%s: agent not started: %s; taskiq runs without z4j", prefix, exc)
            return None
        except Exception as exc:  # noqa: BLE001
            blog.error("%s: agent not started: %s: %s; taskiq runs without z4j", prefix, type(exc).__name__, exc)
            log.debug("z4j taskiq: bootstrap failed", exc_info=True)
            return None
        self.agent = agent
        what = f"worker {agent.worker}" if role == WORKER else role
        blog.info("%s: agent runtime started (%s, pid %d)", prefix, what, pid)
        return agent

    async def startup(self) -> None:
        try:
            agent = self._ensure()
            if agent is None:
                return
            agent.loop = asyncio.get_running_loop()
            if agent.role == WORKER:
                agent.worker_event("online")
                agent.start_monitor()
        except Exception:  # noqa: BLE001 - the broker starts with or without us
            log.exception("z4j taskiq: startup failed; taskiq runs without z4j")

    async def shutdown(self) -> None:
        agent = self.agent
        if agent is None or self._pid != os.getpid():
            return
        try:
            agent.worker_event("offline")
            # Flushing waits for the collector's ack: off the loop, in a thread,
            # and inside taskiq's own limit on the broker's shutdown, so that a
            # flush that cannot finish is said before the process exits.
            flushed = await asyncio.get_running_loop().run_in_executor(None, agent.stop, SHUTDOWN_FLUSH_S)
            if not flushed:
                log.warning("z4j taskiq: %d event(s) not delivered at shutdown", agent.runtime.pending)
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: shutdown failed")
        finally:
            self.agent, self._pid = None, None

    # ------------------------------------------------------------ producer side

    def pre_send(self, message: Any) -> Any:
        agent = self.agent if self._pid == os.getpid() else self._ensure()
        if agent is None:
            return message
        try:
            labels = message.labels
            labels[SENT_AT] = repr(time.time())
            parent = current.get()
            if parent is not None and PARENT not in labels:
                labels[PARENT], labels[ROOT] = parent
            types = message.labels_types
            if types is not None:
                float_t, str_t = _label_types()
                types[SENT_AT] = float_t
                if PARENT in labels:
                    types[PARENT] = types[ROOT] = str_t
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: pre_send failed")
        return message

    def post_send(self, message: Any) -> None:
        agent = self.agent
        if agent is None or self._pid != os.getpid():
            return
        try:
            labels = message.labels
            try:
                ts = float(labels.get(SENT_AT))
            except (TypeError, ValueError):
                ts = time.time()
            queue = brokers.queue_of(self.broker, labels)
            agent.note_queue(queue)
            extra: dict[str, Any] = {}
            if labels.get(RETRY_OF):
                extra["retry_of"] = labels[RETRY_OF]
            schedule_id = labels.get("schedule_id")
            if schedule_id:
                extra["schedule"] = schedule_id
            if agent.worker:
                extra["worker"] = agent.worker
            agent.runtime.emit(p.TaskEvent(
                id=p.new_id(), task_id=message.task_id, engine=ENGINE, kind="sent", ts=ts, engine_state="sent",
                name=message.task_name, queue=queue, args=list(message.args), kwargs=dict(message.kwargs),
                retries=_int(labels.get("_retries")), parent_id=labels.get(PARENT) or None,
                root_id=labels.get(ROOT) or None,
                replay=seal_message(agent.secret, message, self.broker.formatter, parsed_labels=False, queue=queue),
                extra=extra or None))
            if schedule_id and self.schedules is not None:
                self.schedules.fired(schedule_id, message.task_name, message.task_id, ts, manual_fire.get())
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: post_send failed")

    # ------------------------------------------------------------ worker side

    def pre_execute(self, message: Any) -> Any:
        agent = self.agent
        if agent is None or self._pid != os.getpid():
            return message
        try:
            now = time.time()
            task_id = message.task_id
            labels = message.labels
            agent.running[task_id] = (now, asyncio.current_task(), message.task_name)
            parent = labels.get(PARENT) or None
            root = labels.get(ROOT) or task_id
            current.set((task_id, root))
            queue = brokers.queue_of(self.broker, labels)
            extra: dict[str, Any] = {"pid": agent.pid}
            if labels.get(RETRY_OF):
                extra["retry_of"] = labels[RETRY_OF]
            if labels.get("schedule_id"):
                extra["schedule"] = labels["schedule_id"]
            agent.runtime.emit(p.TaskEvent(
                id=p.new_id(), task_id=task_id, engine=ENGINE, kind="started", ts=now, engine_state="executing",
                name=message.task_name, queue=queue, worker=agent.worker, args=list(message.args),
                kwargs=dict(message.kwargs), retries=_int(labels.get("_retries")), parent_id=parent,
                root_id=root,
                replay=seal_message(agent.secret, message, self.broker.formatter, parsed_labels=True, queue=queue),
                extra=extra))
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: pre_execute failed")
        return message

    def on_error(self, message: Any, result: Any, exception: BaseException) -> None:
        agent = self.agent
        if agent is None or self._pid != os.getpid():
            return
        try:
            from taskiq.exceptions import NoResultError

            now = time.time()
            task_id = message.task_id
            start = agent.running.get(task_id)
            runtime = now - start[0] if start else None
            retries = _int(message.labels.get("_retries"))
            fields: dict[str, Any] = {}
            if isinstance(exception, NoResultError):
                kind, state, fields["extra"] = "succeeded", "no_result", {"no_result": True}
            elif isinstance(exception, asyncio.CancelledError) and task_id in agent.cancelling:
                kind, state, fields["extra"] = "revoked", "cancelled", {"terminated": True}
            else:
                kind, state = ("retried", "retry") if self.will_retry(message, exception) else ("failed", "error")
                fields["exception"] = exception_text(exception)
                fields["traceback"] = traceback_text(exception)
            agent.runtime.emit(p.TaskEvent(id=p.new_id(), task_id=task_id, engine=ENGINE, kind=kind, ts=now,
                                           engine_state=state, worker=agent.worker, runtime=runtime,
                                           retries=retries, **fields))
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: on_error failed")

    def post_execute(self, message: Any, result: Any) -> None:
        agent = self.agent
        if agent is None or self._pid != os.getpid():
            return
        try:
            now = time.time()
            task_id = message.task_id
            start = agent.running.pop(task_id, None)
            agent.cancelling.discard(task_id)
            agent.processed += 1
            if not result.is_err:
                agent.runtime.emit(p.TaskEvent(
                    id=p.new_id(), task_id=task_id, engine=ENGINE, kind="succeeded", ts=now, engine_state="success",
                    worker=agent.worker, result=result.return_value,
                    runtime=now - start[0] if start else result.execution_time))
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: post_execute failed")

    def will_retry(self, message: Any, exception: BaseException) -> bool:
        """Whether a retry middleware on this broker kicks the task again (its own rules)."""
        from taskiq.exceptions import NoResultError
        from taskiq.middlewares import SimpleRetryMiddleware, SmartRetryMiddleware

        if isinstance(exception, NoResultError):
            return False
        labels = message.labels
        for mw in self.broker.middlewares:
            if not isinstance(mw, (SmartRetryMiddleware, SimpleRetryMiddleware)):
                continue
            try:
                types = mw._get_types_of_exceptions(message)
                if types is not None and not isinstance(exception, tuple(types)):
                    continue
                flag = labels.get("retry_on_error")
                if isinstance(flag, str):
                    flag = flag.lower() == "true"
                if flag is None:
                    flag = mw.default_retry_label
                if flag and _int(labels.get("_retries")) + 1 < int(labels.get("max_retries",
                                                                             mw.default_retry_count)):
                    return True
            except Exception:  # noqa: BLE001 - a middleware we cannot read: say failed
                continue
        return False

