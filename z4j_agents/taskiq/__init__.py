"""z4j for taskiq: one middleware, added with one line::

    from z4j_agents.taskiq import Z4JMiddleware

    broker.add_middlewares(Z4JMiddleware())     # Z4J_BRAIN_URL, Z4J_TOKEN, Z4J_HMAC_SECRET, ...

Each process that starts the broker (every ``taskiq worker`` process after
the CLI forks it, ``taskiq scheduler``, a producer) gets one agent and one
connection, opened in that process. See docs/taskiq.md.
"""

from __future__ import annotations

from z4j_agents.taskiq.middleware import Z4JMiddleware

__all__ = ["Z4JMiddleware"]
