"""Must show: the shell's screen registry (a screen registered by a module
gets its key, its help line and a "Go to" command in the palette), the help
screen listing the keys of the screen below, and the light/dark switch.
Against a port nothing listens on: the shell must work while the collector
is away, and say so once."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from textual.notifications import Notify
from textual.screen import Screen
from textual.widgets import Static

from tests.support.servers import free_port
from tests.tui.helpers import screen_text, until
from z4j_tui.app import SCREENS, ScreenSpec, Z4jApp, register_screen
from z4j_tui.client import Client
from z4j_tui.screens.help import HelpScreen
from z4j_tui.screens.tasks import TasksScreen


class ProbeScreen(Screen[None]):
    def compose(self):
        yield Static(f"probe of {self.app.project}")


@pytest.fixture
def probe():
    spec = register_screen(ScreenSpec("probe", "Probe", "9", lambda app: ProbeScreen(), "A screen of the test"))
    yield spec
    del SCREENS["probe"]


def test_a_key_cannot_open_two_screens(probe):
    with pytest.raises(ValueError, match="already opens 'probe'"):
        register_screen(ScreenSpec("other", "Other", "9", lambda app: ProbeScreen()))


async def test_registry_help_palette_and_theme(probe):
    messages = []
    client = Client(f"http://127.0.0.1:{free_port()}", "z4jt_nobody")
    app = Z4jApp(client, "default", refresh_interval=3600)
    try:
        async with app.run_test(size=(80, 24), message_hook=messages.append) as pilot:
            await until(pilot, lambda: isinstance(app.screen, TasksScreen), "the tasks screen")
            errors = lambda: [m.notification.message for m in messages  # noqa: E731
                              if isinstance(m, Notify) and m.notification.severity == "error"]
            await until(pilot, errors, "the connection error")
            assert errors()[0].startswith("connection lost: cannot reach the collector")

            # the registered screen's key opens it; 1 comes back to the same tasks screen
            tasks = app.screen
            await pilot.press("9")
            assert isinstance(app.screen, ProbeScreen)
            await pilot.press("1")
            assert app.screen is tasks

            # help lists the screens and the keys of the screen below
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            # (at 80x24 the list scrolls: read all of it)
            console = Console(width=80, file=io.StringIO(), record=True)
            console.print(app.screen.keys_table(tasks))
            text = console.export_text()
            assert "Probe" in text and "Tasks" in text
            for words in ("State", "Refresh", "Filter"):
                assert words in text, words
            await pilot.press("escape")
            assert app.screen is tasks

            # the palette finds the screen by name
            await pilot.press("ctrl+p")
            await pilot.press(*"go to probe")
            await until(pilot, lambda: "Go to Probe" in screen_text(app), "the palette hit")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ProbeScreen), "the probe screen")

            # ctrl+t switches light and dark
            dark = app.current_theme.dark
            await pilot.press("ctrl+t")
            assert app.current_theme.dark is not dark
            assert len(errors()) == 1
    finally:
        client.close()
