"""z4j for Huey: capture, actions, probe and periodic tasks; the agent side of the Huey engine.

One line on the Huey instance, in the module that defines it (so that the
consumer and every producer run it)::

    from huey import RedisHuey
    from z4j_agents.huey import install

    huey = RedisHuey("proj")
    install(huey)                 # settings from Z4J_BRAIN_URL, Z4J_TOKEN, Z4J_HMAC_SECRET...

``huey_consumer proj.huey`` then starts the agent in the consumer (thread,
process or greenlet workers) and logs ``z4j consumer bootstrap: agent runtime
started`` on logger ``huey.z4j``; any other process starts a reporting-only
agent at its first enqueue, so tasks are seen while they wait in the queue.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from z4j_agents.config import AgentConfig

__all__ = ["current_agent", "install", "stop"]

log = logging.getLogger("huey.z4j")

_bindings: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def install(huey: Any, config: AgentConfig | None = None, *, redactor: Any = None,
            heartbeat_s: float | None = None, queue_depth_s: float | None = None,
            capture_enqueue: bool = True) -> None:
    """Connect z4j to ``huey``. Idempotent; never raises into the caller.

    ``heartbeat_s`` (10) and ``queue_depth_s`` (5; 0 turns sampling off) tune
    the consumer side (also ``Z4J_HUEY_HEARTBEAT_S``, ``Z4J_HUEY_QUEUE_DEPTH_S``).
    ``capture_enqueue=False`` keeps a producer from starting an agent.
    """
    try:
        binding = _bindings.get(huey)
        fresh = binding is None
        if fresh:
            from z4j_agents.huey.capture import Binding

            binding = Binding(huey)
        settings = binding.settings
        if config is not None:
            settings.config = config
        if redactor is not None:
            settings.redactor = redactor
        for key, value in (("heartbeat_s", heartbeat_s), ("queue_depth_s", queue_depth_s)):
            if value is not None:
                settings.options[key] = float(value)
        settings.capture_enqueue = capture_enqueue
        if fresh:
            binding.connect()
            _wrap_create_consumer(binding)
            _bindings[huey] = binding
    except Exception:  # noqa: BLE001
        log.exception("z4j huey: install failed; Huey runs without z4j")


def _wrap_create_consumer(binding: Any) -> None:
    """``huey_consumer`` (and djhuey's ``run_huey``) build the consumer with
    ``huey.create_consumer``: the agent starts there, before any worker forks.
    Only this instance's attribute is set; Huey's classes are untouched."""
    original = binding.huey.create_consumer

    def create_consumer(**options: Any) -> Any:
        consumer = original(**options)
        from z4j_agents.huey.agent import start_consumer_agent

        start_consumer_agent(binding, consumer)
        return consumer

    binding.huey.create_consumer = create_consumer


def current_agent(huey: Any) -> Any:
    """The HueyAgent of ``huey`` in this process, or None."""
    binding = _bindings.get(huey)
    return binding.agent if binding is not None else None


def stop(huey: Any, timeout: float = 5.0) -> bool:
    """Flush and stop a producer's agent (for scripts that exit right after enqueueing)."""
    binding = _bindings.get(huey)
    agent = binding.agent if binding is not None else None
    return agent.stop(timeout) if agent is not None else True
