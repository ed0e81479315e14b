"""The console as ``z4j demo`` opens it: the usual app, logged in as the
demo admin, that also quits on Ctrl-C and says so when a process of the demo
dies (kept apart from z4j_tui.demo, so ``--no-tui`` never imports Textual)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from textual.binding import Binding

from z4j_tui.app import Z4jApp
from z4j_tui.client import Client

if TYPE_CHECKING:
    from z4j_tui.demo import World

WATCH_S = 1.0
"""Seconds between two looks at the demo's processes."""


class DemoApp(Z4jApp):
    BINDINGS = [Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="demo-quit")]

    def __init__(self, client: Client, project: str, world: World) -> None:
        super().__init__(client, project)
        self.world = world
        self.failure: str | None = None
        """Why the demo stopped on its own (a process died), for the one line after the console closes."""
        self.loop: asyncio.AbstractEventLoop | None = None

    def on_mount(self) -> None:
        super().on_mount()
        self.loop = asyncio.get_running_loop()
        self.set_interval(WATCH_S, self.watch_world)

    def show_subtitle(self) -> None:
        self.sub_title = f"demo · {self.project} · {self.client.url} · ctrl+c stops the demo"

    def watch_world(self) -> None:
        from z4j_tui.demo import DemoError

        try:
            self.world.check()
        except DemoError as exc:
            self.failure = str(exc)
            self.exit()

    def stop_soon(self) -> None:
        """From a signal handler (SIGTERM, SIGHUP): quit on the app's own loop."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.exit)
        else:
            raise KeyboardInterrupt
