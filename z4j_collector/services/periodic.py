"""Background passes (checkpoints, reconciler, rules, schedule sync, trends,
retention): one loop, so every pass fails the same way — logged, and the
next pass runs on time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("z4j.collector")


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Stop a background task and wait until it has ended."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def every(interval_s: float, job: Callable[[], Awaitable[Any]], what: str, *, first_now: bool = False) -> None:
    """Run ``job`` every ``interval_s`` seconds until cancelled (first at once
    with ``first_now``, else after one interval)."""
    if not first_now:
        await asyncio.sleep(interval_s)
    while True:
        try:
            await job()
        except Exception:  # noqa: BLE001 - a background pass never stops the loop
            log.exception("%s failed; the next pass runs in %.0f s", what, interval_s)
        await asyncio.sleep(interval_s)


class Periodic:
    """A background coroutine with the start/stop of a service (a leader job)."""

    def __init__(self, make: Callable[[], Awaitable[Any]]) -> None:
        self.make = make
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.make())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
