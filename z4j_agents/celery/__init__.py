"""z4j for Celery: capture, prefork relay, queue depths; the agent side of the Celery engine.

Zero code: with ``z4j[celery]`` installed and ``Z4J_BRAIN_URL``, ``Z4J_TOKEN``
and ``Z4J_HMAC_SECRET`` set, ``celery -A proj worker`` starts the agent by
itself (Celery loads our ``celery.commands`` entry point, activation.py).

In code, for workers and for producers (publish-side capture)::

    from z4j_agents.celery import install
    install(app)                      # config from the environment
    install(app, config=AgentConfig(...), redactor=Redactor(...))

``install`` never starts anything in ``celery beat``, ``inspect`` or
``purge``: a worker starts its agent at ``worker_init``; any other process
that installed it starts one at its first task publish (``beat`` excepted).
"""

from __future__ import annotations

import logging
from typing import Any

from z4j_agents.config import AgentConfig

__all__ = ["CAPABILITIES", "current_agent", "install"]

log = logging.getLogger("z4j.celery")


def install(app: Any, config: AgentConfig | None = None, *, redactor: Any = None,
            heartbeat_s: float | None = None, queue_depth_s: float | None = None,
            queues: tuple[str, ...] | list[str] | None = None, capture_publish: bool = True) -> None:
    """Connect z4j to ``app``. Idempotent; never raises into the caller for
    a missing environment (the worker logs one line and runs without z4j).

    ``heartbeat_s`` (10), ``queue_depth_s`` (5; 0 turns sampling off) and
    ``queues`` (extra queue names whose depth to sample) tune the worker side.
    ``capture_publish=False`` keeps a producer from starting an agent.
    """
    from z4j_agents.celery import agent as _agent
    from z4j_agents.celery import capture

    try:
        settings = _agent.settings
        settings.app = app
        if config is not None:
            settings.config = config
        if redactor is not None:
            settings.redactor = redactor
        for key, value in (("heartbeat_s", heartbeat_s), ("queue_depth_s", queue_depth_s)):
            if value is not None:
                settings.options[key] = float(value)
        if queues is not None:
            settings.options["queues"] = tuple(queues)
        _agent.connect_worker_signals()
        capture.connect_task_signals()
        if capture_publish and capture.state.publish_factory is None:
            capture.state.publish_factory = lambda: _publish_agent(app)
        capture.state.publish_enabled = capture_publish
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: install failed; Celery runs without z4j")


def _publish_agent(app: Any) -> Any:
    """A producer's agent, built at its first publish; None (one log line) without config."""
    from z4j_agents.celery import agent as _agent
    from z4j_agents.config import ConfigError

    try:
        agent = _agent.build_agent(app)
    except ConfigError as exc:
        log.error("z4j celery: publish capture off: %s", exc)
        from z4j_agents.celery import capture

        capture.state.publish_enabled = False
        return None
    agent.runtime.start()
    return agent


def current_agent() -> Any:
    """This process's CeleryAgent, or None."""
    from z4j_agents.celery import capture

    return capture.state.agent


def __getattr__(name: str) -> Any:
    if name == "CAPABILITIES":
        from z4j_agents.celery.agent import CAPABILITIES

        return CAPABILITIES
    raise AttributeError(name)
