"""z4j for Dramatiq: one middleware, added last to the broker::

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from z4j_agents.dramatiq import Z4JMiddleware

    broker = RedisBroker(url="redis://…")
    broker.add_middleware(Z4JMiddleware())      # settings from Z4J_BRAIN_URL, Z4J_TOKEN, Z4J_HMAC_SECRET, …
    dramatiq.set_broker(broker)

Each process that imports the broker gets its own agent: ``dramatiq`` worker
processes at boot (after the fork), other processes at their first enqueue.
See docs/dramatiq.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Z4JMiddleware", "current_agent"]


def current_agent(broker: Any = None) -> Any:
    """This process's Dramatiq agent (of ``broker``, default the global one), or None."""
    import dramatiq

    from z4j_agents.dramatiq.middleware import Z4JMiddleware

    broker = broker or dramatiq.get_broker()
    for middleware in broker.middleware:
        if isinstance(middleware, Z4JMiddleware):
            return middleware._current()
    return None


def __getattr__(name: str) -> Any:
    if name == "Z4JMiddleware":
        from z4j_agents.dramatiq.middleware import Z4JMiddleware

        return Z4JMiddleware
    raise AttributeError(name)
