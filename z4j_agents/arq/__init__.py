"""z4j for arq: capture, sealed calls, actions and cron listing for arq workers.

One line in the module that holds the worker settings::

    from z4j_agents.arq import install

    class WorkerSettings:
        functions = [send_mail]
        cron_jobs = [cron(cleanup, minute=0)]

    install(WorkerSettings)          # or install({"functions": [...], ...}) for a dict

``arq module.WorkerSettings`` then starts the agent in ``on_startup``
(settings from ``Z4J_BRAIN_URL``, ``Z4J_TOKEN``, ``Z4J_HMAC_SECRET``). The
application's own ``on_startup``/``on_shutdown`` still run, after z4j's.
``install`` never raises into the application: without the settings the
worker logs one line and runs without z4j.

In a process that only enqueues (a web application), ``install()`` without
settings captures every ``ArqRedis.enqueue_job``: the agent starts at the
first enqueue, and queued jobs are visible (``pending``) before a worker
takes them.

A mix-in (``class WorkerSettings(Z4JSettings)``) cannot work: arq reads only
the settings class's own attributes (``arq.worker.get_kwargs`` uses
``cls.__dict__``), never inherited ones.
"""

from __future__ import annotations

import logging
from typing import Any

from z4j_agents.config import AgentConfig

__all__ = ["current_agent", "install"]

log = logging.getLogger("z4j.arq")

def install(settings: Any = None, config: AgentConfig | None = None, *, redactor: Any = None,
            heartbeat_s: float | None = None, queue_depth_s: float | None = None,
            queues: tuple[str, ...] | list[str] | None = None, capture_enqueue: bool = True) -> Any:
    """Connect z4j to arq in this process; returns ``settings``.

    ``settings``: the WorkerSettings class (or dict) whose ``on_startup`` and
    ``on_shutdown`` z4j chains (idempotent). ``heartbeat_s`` (10),
    ``queue_depth_s`` (5; 0 turns sampling off) and ``queues`` (more queues
    whose depth to sample) tune the worker side. ``capture_enqueue=False``
    keeps this process from recording (and starting an agent at) enqueues.
    """
    from z4j_agents.arq import capture

    try:
        options: dict[str, Any] = {}
        for key, value in (("heartbeat_s", heartbeat_s), ("queue_depth_s", queue_depth_s)):
            if value is not None:
                options[key] = float(value)
        if queues is not None:
            options["queues"] = tuple(queues)
        capture.patch_enqueue()
        capture.state.enqueue_enabled = capture_enqueue
        if capture_enqueue and capture.state.agent is None and capture.state.enqueue_factory is None:
            capture.state.enqueue_factory = lambda: _producer_agent(config, redactor, options)
        if settings is not None:
            _wrap_settings(settings, config, redactor, options)
    except Exception:  # noqa: BLE001
        log.exception("z4j arq: install failed; arq runs without z4j")
    return settings


def _wrap_settings(settings: Any, config: AgentConfig | None, redactor: Any, options: dict[str, Any]) -> None:
    from z4j_agents.arq import agent as _agent

    if isinstance(settings, dict):
        get, put = settings.get, settings.__setitem__
    elif isinstance(settings, type):
        # arq reads the class's own __dict__ only (arq.worker.get_kwargs): so do we
        get, put = vars(settings).get, lambda key, value: setattr(settings, key, value)
    else:
        raise TypeError(f"arq worker settings are a class or a dict, got {type(settings).__name__}")
    startup, shutdown = get("on_startup"), get("on_shutdown")
    if getattr(startup, "__z4j__", False):
        return

    async def on_startup(ctx: dict) -> None:
        _agent.bootstrap_worker(ctx, config, redactor, options)
        if startup is not None:
            await startup(ctx)

    async def on_shutdown(ctx: dict) -> None:
        try:
            if shutdown is not None:
                await shutdown(ctx)
        finally:
            await _agent.shutdown_worker()

    for hook, wrapper in (("on_startup", on_startup), ("on_shutdown", on_shutdown)):
        wrapper.__z4j__ = True  # type: ignore[attr-defined]
        put(hook, wrapper)


def _producer_agent(config: AgentConfig | None, redactor: Any, options: dict[str, Any]) -> Any:
    """A producer's agent, built at its first enqueue; None (one log line) without config."""
    from z4j_agents.arq import agent as _agent
    from z4j_agents.arq import capture
    from z4j_agents.config import ConfigError

    try:
        agent = _agent.build_agent(config, redactor, options)
    except ConfigError as exc:
        log.error("z4j arq: enqueue capture off: %s", exc)
        capture.state.enqueue_enabled = False
        return None
    capture.state.agent = agent
    agent.start()
    return agent


def current_agent() -> Any:
    """This process's ArqAgent, or None."""
    from z4j_agents.arq import capture

    return capture.state.agent
