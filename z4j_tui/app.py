"""The z4j terminal console (``z4j-tui``).

It talks to the collector only through the REST client (z4j_tui.client);
workers do the I/O and post messages, the screens' handlers own the state.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from textual.app import App
from textual.screen import Screen

from z4j_tui.client import Client
from z4j_tui.config import ConfigError, Settings
from z4j_tui.screens.tasks import TasksScreen


class Z4jApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "z4j"

    def __init__(self, client: Client, project: str = "default", *, refresh_interval: float = 2.0) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.refresh_interval = refresh_interval
        """Seconds between two refreshes of the task list."""

    def on_mount(self) -> None:
        self.sub_title = f"{self.project} · {self.client.url}"

    def get_default_screen(self) -> Screen[None]:
        return TasksScreen(self.client, self.project, self.refresh_interval)


def run(argv: Sequence[str] | None = None) -> None:
    try:
        settings = Settings.from_args(argv)
    except ConfigError as exc:
        sys.stderr.write(f"z4j-tui: {exc}\n")
        raise SystemExit(2) from None
    # A short timeout: a hung request must not hold the quit for long
    # (the refresh threads are waited for on exit).
    client = Client(settings.url, settings.token, timeout=10.0)
    try:
        Z4jApp(client, settings.project).run()
    finally:
        client.close()
