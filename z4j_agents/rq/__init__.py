"""z4j for RQ: capture from ``rq worker``, actions, probes, schedules.

Worker, no task-code change (with ``z4j[rq]`` installed and ``Z4J_BRAIN_URL``,
``Z4J_TOKEN`` and ``Z4J_HMAC_SECRET`` set)::

    rq worker -w z4j_agents.rq.Worker default

Producers (enqueue capture, ``depends_on`` edges): enqueue through
:class:`z4j_agents.rq.Queue` instead of ``rq.Queue``; its agent starts at the
first enqueue. ``install(config=..., redactor=...)`` overrides the
environment for both sides. Details: docs/rq.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Queue", "SimpleWorker", "Worker", "current_agent", "install"]


def install(config: Any = None, *, redactor: Any = None, heartbeat_s: float | None = None,
            queue_depth_s: float | None = None, schedules: bool | None = None) -> None:
    """Settings for this process's agent (worker or producer), instead of the environment.
    Never raises: a worker without a usable configuration runs without z4j."""
    from z4j_agents.rq import agent

    agent.configure(config=config, redactor=redactor, heartbeat_s=heartbeat_s, queue_depth_s=queue_depth_s,
                    schedules=schedules)


def current_agent() -> Any:
    """This process's RQAgent, or None."""
    from z4j_agents.rq.agent import state

    return state.agent


def __getattr__(name: str) -> Any:
    if name in ("Worker", "SimpleWorker"):
        from z4j_agents.rq import worker

        return getattr(worker, name)
    if name == "Queue":
        from z4j_agents.rq.capture import Queue

        return Queue
    raise AttributeError(name)
