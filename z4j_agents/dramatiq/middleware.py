"""``Z4JMiddleware``: Dramatiq's hooks as z4j task events.

Every hook is a guest in the worker: it wraps its whole body, logs what went
wrong and returns; nothing here can fail, block or slow a message beyond
building one small event (and, at enqueue and first start, sealing the
message for retries). Dramatiq swallows what a middleware raises anyway,
except ``SkipMessage`` from ``before_process_message``, which z4j never raises.

=========  ===============================================  ================
kind       hook                                             engine_state
=========  ===============================================  ================
sent       before/after_enqueue (any process with the        ENQUEUED, DELAYED
           middleware; dated before the enqueue)
started    before_process_message                           STARTED
succeeded  after_process_message (runtime, result)          SUCCESS
retried    after_process_message with an exception, then    RETRY
           Retries re-enqueues the same message id
failed     ... then nack (the message went to the XQ)       DEAD_LETTERED
           ... then ack (no Retries middleware)             FAILURE
revoked    after_skip_message then ack (dramatiq-abort's    SKIPPED
           cancel), or dramatiq-abort's ``Abort``           ABORTED
rejected   after_skip_message then nack (e.g. AgeLimit)     SKIPPED
=========  ===============================================  ================

Dramatiq re-enqueues a retry under the same message id, so a retry is one
task with attempts (``retries``), never a new task. Enqueues made by a
consumer thread (a delayed message whose time came) are not events.

Sealing: a message is sealed for retries where it is enqueued by a process
with the middleware (which marks it ``z4j_sealed``), else where a worker
first starts it.

DAG: a message enqueued while a worker thread processes another (a pipeline's
next step, a group's completion callback, ``on_retry_exhausted``, a message
sent by an actor) gets that message as ``parent_id`` and its root as
``root_id``, stamped into its options (``z4j_parent``, ``z4j_root``) so that
the process that runs it knows them too. Group members with a completion
callback carry ``group_id`` (the group's completion id) and ``chord_id`` (the
callback's message id).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from dramatiq.middleware import Middleware

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig, ConfigError
from z4j_agents.failure import exception_text, traceback_text

log = logging.getLogger("z4j.dramatiq")

ENGINE = "dramatiq"
PARENT, ROOT, RETRY_OF, SEALED = "z4j_parent", "z4j_root", "z4j_retry_of", "z4j_sealed"


def _q(name: str) -> str:
    return name[:-3] if name.endswith((".DQ", ".XQ")) else name


def _is_abort(exc: Any) -> bool:
    return type(exc).__name__ == "Abort" and type(exc).__module__.startswith("dramatiq_abort")


class _Outcome:
    """An attempt that did not succeed, until Dramatiq decides: retry, ack or nack."""

    __slots__ = ("exception", "traceback", "runtime", "skipped", "aborted")

    def __init__(self, exception: str | None, traceback: str | None, runtime: float | None, *,
                 skipped: bool = False, aborted: bool = False) -> None:
        self.exception, self.traceback, self.runtime = exception, traceback, runtime
        self.skipped, self.aborted = skipped, aborted


class Z4JMiddleware(Middleware):
    """Add it last: ``broker.add_middleware(Z4JMiddleware())``.

    Settings come from the environment (``Z4J_BRAIN_URL``, ``Z4J_TOKEN``,
    ``Z4J_HMAC_SECRET``, …); the arguments override them. ``capture_enqueue``
    (default True) lets a process that only sends messages start an agent at
    its first enqueue, so queued messages are seen before a worker takes them.
    """

    def __init__(self, *, config: AgentConfig | None = None, redactor: Any = None, heartbeat_s: float | None = None,
                 queue_depth_s: float | None = None, queues: list[str] | tuple[str, ...] | None = None,
                 capture_enqueue: bool = True) -> None:
        self.config = config
        self.redactor = redactor
        self.options: dict[str, Any] = {}
        if heartbeat_s is not None:
            self.options["heartbeat_s"] = float(heartbeat_s)
        if queue_depth_s is not None:
            self.options["queue_depth_s"] = float(queue_depth_s)
        if queues is not None:
            self.options["queues"] = tuple(queues)
        self.capture_enqueue = capture_enqueue
        self.agent: Any = None
        self._agent_pid = 0
        self._refused = False
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._outcomes: dict[str, _Outcome] = {}

    # ------------------------------------------------------------ agent

    def _current(self) -> Any:
        agent = self.agent
        if agent is not None and self._agent_pid != os.getpid():
            return None  # inherited over a fork; this process builds its own when it needs one
        return agent

    def _build(self, broker: Any, *, worker: bool) -> Any:
        """This process's agent (built once); None with a log line when unconfigured."""
        from z4j_agents.dramatiq import agent as _agent

        with self._lock:
            agent = self._current()
            if agent is not None or (self._refused and self._agent_pid == os.getpid()):
                return agent
            self._agent_pid = os.getpid()
            try:
                config = self.config or AgentConfig.from_env()
                options = {**_agent.options_from_env(), **self.options}
                agent = _agent.DramatiqAgent(broker, config, redactor=self.redactor, **options)
            except ConfigError as exc:
                self._refused = True
                if worker:
                    _agent.bootstrap_log.error("z4j worker bootstrap: agent not started: %s; the worker runs "
                                               "without z4j", exc)
                else:
                    log.error("z4j dramatiq: enqueue capture off: %s", exc)
                return None
            try:
                from z4j_agents.dramatiq import actions

                actions.register(agent, self)
            except Exception:  # noqa: BLE001
                log.exception("z4j dramatiq: registering the actions failed; the agent runs without them")
            self.agent = agent
            agent.runtime.start()
            if worker:
                _agent.bootstrap_log.info(_agent.BOOTSTRAP_LINE)
            return agent

    # ------------------------------------------------------------ lifecycle

    def after_process_boot(self, broker: Any) -> None:
        try:
            self._build(broker, worker=True)
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: after_process_boot failed")

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        try:
            agent = self._current()
            if agent is None or agent.worker is not None:
                agent = self._build(broker, worker=True)
            if agent is not None:
                agent.worker = worker
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: before_worker_boot failed")

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        try:
            agent = self._current()
            if agent is not None:
                agent.start_worker(worker)
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: after_worker_boot failed")

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        try:
            agent = self._current()
            if agent is not None and agent.worker is worker:
                agent.stop_worker()
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: after_worker_shutdown failed")

    def after_consumer_thread_boot(self, broker: Any, thread: Any) -> None:
        self._tls.consumer = True

    # ------------------------------------------------------------ enqueue

    def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        tls = self._tls
        tls.pending = None
        try:
            if getattr(tls, "consumer", False):
                return  # a delayed message moved to its queue by a consumer: not news
            agent = self._current()
            if agent is None:
                if not self.capture_enqueue or self._refused:
                    return
                agent = self._build(broker, worker=False)
                if agent is None:
                    return
            options = message.options
            current = getattr(tls, "current", None)
            queue = _q(message.queue_name)
            eta = options.get("eta")
            eta = eta / 1000 if isinstance(eta, (int, float)) else None
            if current is not None and current[0] == message.message_id:
                outcome = self._outcomes.pop(message.message_id, None)
                tls.pending = self._event(
                    message, "retried", "RETRY", queue=queue, eta=eta, retries=options.get("retries"),
                    exception=outcome.exception if outcome else None, traceback=outcome.traceback if outcome else None,
                    runtime=outcome.runtime if outcome else None, worker=agent.worker_name)
                return
            if current is not None:
                options[PARENT] = current[0]
                options[ROOT] = current[1]
            from z4j_agents.dramatiq.call import seal_message

            sealed = seal_message(agent.config.hmac_secret, message, queue)
            options[SEALED] = 1  # the worker need not seal it again
            tls.pending = self._event(message, "sent", "DELAYED" if delay else "ENQUEUED", queue=queue, eta=eta,
                                      args=message.args, kwargs=message.kwargs, retries=options.get("retries"),
                                      replay=sealed)
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: before_enqueue failed")

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        try:
            event = getattr(self._tls, "pending", None)
            self._tls.pending = None
            if event is not None and event.task_id == message.message_id:
                self.agent.emit(event)  # dated before the enqueue: a worker may start it before this line
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: after_enqueue failed")

    # ------------------------------------------------------------ processing

    def before_process_message(self, broker: Any, message: Any) -> None:
        try:
            agent = self._current()
            if agent is None:
                return
            options = message.options
            tls = self._tls
            root = options.get(ROOT) or message.message_id
            tls.current = (message.message_id, root)
            tls.started = time.monotonic()
            agent.active += 1
            replay = None
            if not options.get("retries") and not options.get(SEALED):
                from z4j_agents.dramatiq.call import seal_message

                replay = seal_message(agent.config.hmac_secret, message, _q(message.queue_name))
            agent.emit(self._event(message, "started", "STARTED", queue=_q(message.queue_name),
                                   worker=agent.worker_name, args=message.args, kwargs=message.kwargs,
                                   retries=options.get("retries"), replay=replay, pid=True))
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: before_process_message failed")

    def _started(self, message: Any) -> bool:
        current = getattr(self._tls, "current", None)
        return current is not None and current[0] == message.message_id

    def _runtime(self) -> float | None:
        started = getattr(self._tls, "started", None)
        return None if started is None else time.monotonic() - started

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        try:
            agent = self._current()
            if agent is None or not self._started(message):
                return
            agent.active -= 1
            agent.processed += 1
            runtime = self._runtime()
            if exception is None and not message.failed:
                agent.emit(self._event(message, "succeeded", "SUCCESS", worker=agent.worker_name, result=result,
                                       runtime=runtime))
                return
            if exception is None:
                self._outcomes[message.message_id] = _Outcome("failed by a middleware", None, runtime)
            else:
                self._outcomes[message.message_id] = _Outcome(
                    exception_text(exception), traceback_text(exception), runtime, aborted=_is_abort(exception))
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: after_process_message failed")

    def after_skip_message(self, broker: Any, message: Any) -> None:
        try:
            agent = self._current()
            if agent is None:
                return
            runtime = None
            if self._started(message):  # else a middleware before this one skipped it (dramatiq-abort's cancel)
                agent.active -= 1
                runtime = self._runtime()
            self._outcomes[message.message_id] = _Outcome(None, None, runtime, skipped=True)
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: after_skip_message failed")

    def after_ack(self, broker: Any, message: Any) -> None:
        self._settle(message, dead=False)

    def after_nack(self, broker: Any, message: Any) -> None:
        self._settle(message, dead=True)

    def _settle(self, message: Any, *, dead: bool) -> None:
        """The attempt's end: what a failed or skipped attempt came to."""
        try:
            self._tls.current = None
            outcome = self._outcomes.pop(message.message_id, None)
            agent = self._current()
            if agent is None or (outcome is None and not dead):
                return
            fields: dict[str, Any] = {"worker": agent.worker_name}
            if outcome is None:  # nacked without being processed here (an unknown actor)
                exc = getattr(message, "_exception", None)
                kind, state = "rejected", "DEAD_LETTERED"
                fields["exception"] = exception_text(exc) if exc is not None else "dead-lettered before it ran"
            else:
                fields.update(exception=outcome.exception, traceback=outcome.traceback, runtime=outcome.runtime)
                if outcome.aborted:
                    kind, state = "revoked", "ABORTED"
                elif outcome.skipped:
                    kind, state = ("rejected", "SKIPPED") if dead else ("revoked", "SKIPPED")
                else:
                    kind, state = "failed", "DEAD_LETTERED" if dead else "FAILURE"
            if dead:
                fields["extra"] = {"dead_lettered": True}
            agent.emit(self._event(message, kind, state, **fields))
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: ack/nack handler failed")

    # ------------------------------------------------------------ events

    def _event(self, message: Any, kind: str, engine_state: str, *, pid: bool = False, extra: Any = None,
               **fields: Any) -> p.TaskEvent:
        options = message.options
        event = p.TaskEvent(id=p.new_id(), task_id=message.message_id, engine=ENGINE, kind=kind, ts=time.time(),
                            engine_state=engine_state, name=message.actor_name)
        for name, value in fields.items():
            if value is not None:
                setattr(event, name, value)
        if kind in ("sent", "started"):
            event.parent_id = options.get(PARENT)
            event.root_id = options.get(ROOT) or message.message_id
            group = options.get("group_completion_uuid")
            if group:
                event.group_id = str(group)
                callbacks = options.get("group_completion_callbacks")
                if callbacks and isinstance(callbacks[0], dict) and callbacks[0].get("message_id"):
                    event.chord_id = str(callbacks[0]["message_id"])
            retry_of = options.get(RETRY_OF)
            if retry_of or pid or options.get("pipe_target"):
                extra = dict(extra or {})
                if retry_of:
                    extra["retry_of"] = retry_of
                if pid:
                    extra["pid"] = os.getpid()
                target = options.get("pipe_target")
                if isinstance(target, dict) and target.get("message_id"):
                    extra["pipe_target"] = target["message_id"]
        if extra:
            event.extra = extra
        return event
