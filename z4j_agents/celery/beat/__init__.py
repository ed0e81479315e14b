"""Celery Beat for z4j: schedules listed, changed and triggered in the store
beat really uses (RedBeat, django-celery-beat, or the file scheduler through
:class:`Z4JScheduler`). See docs/celery.md, "Beat".

Zero code: ``celery beat`` with ``Z4J_BRAIN_URL`` set starts the beat agent
(the activation hook imports :mod:`.bootstrap`). In code::

    from z4j_agents.celery.beat import install
    install(app)
"""

from __future__ import annotations

from typing import Any

from z4j_agents.celery.beat.scheduler import Z4JScheduler

__all__ = ["Z4JScheduler", "install"]


def install(app: Any) -> None:
    """Start the beat agent when ``celery beat`` starts for ``app`` (and
    ``Z4J_BRAIN_URL`` is set); workers are not affected."""
    from z4j_agents.celery.beat.bootstrap import connect

    connect(app)
