"""What the console tests share: waiting on a Pilot, and the screen as text."""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable

from rich.console import Console
from textual.app import App


def screen_text(app: App) -> str:
    """What the terminal shows, as plain text: the same render as
    ``App.export_screenshot``, recorded as text instead of SVG."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def until(pilot, predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll (generous: the machine may be loaded) until ``predicate()`` holds;
    a timeout says what the screen showed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError(f"timed out waiting for {what}; focus {app.focused!r}, "
                                 f"screen {app.screen!r}:\n{screen_text(app)}")
        await pilot.pause(0.05)


LONG_LIVED = {"stream"}
"""Worker groups that run as long as their screen: a snapshot does not wait for them."""


def steady(ready: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A snapshot's ``run_before``: ``ready(pilot)``, then every question in
    flight answered (a second page or counts fetch, the role that shows or
    hides bindings; only the live stream runs on), then no blinking cursor
    (its phase at the screenshot would be chance)."""
    from textual.widgets import Input

    async def run_before(pilot) -> None:
        await ready(pilot)
        await until(pilot, lambda: not [w for w in pilot.app.workers
                                        if w.is_running and w.group not in LONG_LIVED],
                    "the screen's requests answered")
        for field in pilot.app.screen.query(Input):
            field.cursor_blink = False
        await pilot.pause()

    return run_before
