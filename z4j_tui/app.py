"""The z4j terminal console (``z4j-tui``).

It talks to the collector only through its public API (z4j_tui.client for
REST, z4j_tui.stream for the live WebSocket); workers do the I/O and post
messages, the screens' handlers own the state.

Screens register themselves (``register_screen``) in a module of the
``z4j_tui.screens`` package; the app imports every module of that package
once, gives each screen a global key, a line in the help screen and an entry
in the command palette ("Go to …"), and builds a screen the first time it is
opened. Each screen is a Textual mode named ``project:screen``, so it keeps
its state while another is shown, and a project switch starts afresh.

For screen authors, what the app offers (keep to these, they stay stable):

- ``app.client`` (z4j_tui.client.Client), ``app.project`` (slug),
  ``app.now()`` (the clock; tests pin it for snapshots);
- ``app.goto(name)``: show a registered screen;
- ``app.open_task(engine, task_id)``: push the task detail;
- ``app.report_error(error, title=…)``: show a ClientError or a sentence
  once (a collector that stays down does not toast every refresh), track the
  connection (lost / back, said once each) and, on an ended session, prompt
  for a new login;
- ``app.report_ok()``: a request answered, so the connection is back.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from z4j_tui import credentials
from z4j_tui.client import SESSION_GONE, Client, ClientError
from z4j_tui.config import ConfigError, Settings

if TYPE_CHECKING:
    from z4j_tui.screens.tasks import TasksScreen


# ------------------------------------------------------------------ the screen registry


@dataclass(frozen=True)
class ScreenSpec:
    """One top-level screen of the console."""

    name: str
    """Short id: part of the mode name, and ``app.goto(name)``."""
    title: str
    """What the help screen and the command palette call it ("Workers")."""
    key: str
    """Global key that opens it (a digit: "1" tasks, "2"…"9" the others)."""
    factory: Callable[[Z4jApp], Screen]
    """Builds the screen for the app's client and project."""
    help: str = ""
    """One line for the command palette."""
    order: int = 50
    """Place in the help screen and the palette (tasks is 0)."""


SIGNED_OUT = "signed-out"
"""The mode (an empty screen) behind the login prompt after a logout."""

SCREENS: dict[str, ScreenSpec] = {}
"""Registered screens by name."""


def register_screen(spec: ScreenSpec) -> ScreenSpec:
    """Called at import time by a module of z4j_tui.screens. Registering the
    same name again replaces it (a module imported twice)."""
    clash = next((s for s in SCREENS.values() if s.key == spec.key and s.name != spec.name), None)
    if clash is not None:
        raise ValueError(f"screen {spec.name!r}: key {spec.key!r} already opens {clash.name!r}")
    SCREENS[spec.name] = spec
    return spec


def install_screens() -> list[ScreenSpec]:
    """Import every module of z4j_tui.screens (each registers its screens); the specs in order."""
    import z4j_tui.screens as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return sorted(SCREENS.values(), key=lambda s: (s.order, s.key))


# ------------------------------------------------------------------ the app


class Z4jApp(App[None]):
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))  # absolute: subclasses live elsewhere
    TITLE = "z4j"
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", id="help"),
        Binding("ctrl+t", "toggle_dark", "Light/dark", show=False, id="toggle-dark"),
        Binding("P", "switch_project", "Project", show=False, tooltip="Switch to another project", id="project"),
        Binding("L", "logout", "Log out", show=False, tooltip="End this session and forget the stored login",
                id="logout"),
    ]

    def __init__(self, client: Client, project: str = "default", *, refresh_interval: float = 2.0,
                 now: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.refresh_interval = refresh_interval
        """Seconds between two refreshes of the screens that poll."""
        self.now = now
        """The clock of every age and time range shown: tests pin it."""
        self.screen_specs = install_screens()
        for spec in self.screen_specs:
            self.bind(spec.key, f"goto('{spec.name}')", description=spec.title, show=False)
        self.last_error: str | None = None
        self.connected = True
        self.logging_in = False

    # ---------------------------------------------------------------- navigation

    def on_mount(self) -> None:
        self.show_subtitle()
        if self.client.token:
            self.goto("tasks")
        else:
            self.prompt_login(f"log in to {self.client.url}")

    def show_subtitle(self) -> None:
        self.sub_title = f"{self.project} · {self.client.url}"

    def mode_name(self, name: str, project: str | None = None) -> str:
        return f"{project or self.project}:{name}"

    def goto(self, name: str) -> None:
        spec = SCREENS[name]
        mode = self.mode_name(name)
        if mode not in self._modes:
            self.add_mode(mode, lambda: spec.factory(self))
        self.switch_mode(mode)

    def action_goto(self, name: str) -> None:
        if name in SCREENS:
            self.goto(name)

    def open_task(self, engine: str, task_id: str) -> None:
        from z4j_tui.screens.task_detail import TaskDetailScreen

        self.push_screen(TaskDetailScreen(self.client, self.project, engine, task_id))

    def switch_project(self, project: str) -> None:
        """Show the new project's tasks; the old project's screens go (their streams stop)."""
        if project == self.project:
            return
        old = self.project
        self.project = project
        self.last_error = None
        self.show_subtitle()
        self.goto("tasks")
        for mode in [m for m in self._modes if m.startswith(f"{old}:")]:
            self.remove_mode(mode)

    def action_switch_project(self) -> None:
        from z4j_tui.screens.login import ProjectScreen

        self.push_screen(ProjectScreen(self.client, self.project),
                         lambda slug: self.switch_project(slug) if slug else None)

    # ---------------------------------------------------------------- sessions

    def set_token(self, token: str) -> None:
        self.client.token = token
        if token:
            self.client.http.headers["Authorization"] = f"Bearer {token}"
        else:
            self.client.http.headers.pop("Authorization", None)

    def prompt_login(self, reason: str) -> None:
        """Ask for e-mail and password over whatever is shown; carry on there once logged in."""
        from z4j_tui.screens.login import LoginScreen

        if self.logging_in:
            return
        self.logging_in = True

        def done(token: str | None) -> None:
            self.logging_in = False
            if token:
                self.set_token(token)
                self.last_error = None
                self.notify("logged in", title="z4j")
                if self.current_mode in ("_default", SIGNED_OUT):
                    self.goto("tasks")
                # else the screen below resumes and refetches
            elif not self.client.token:
                self.exit(message=f"not logged in to {self.client.url}")

        self.push_screen(LoginScreen(self.client, reason), done)

    def action_logout(self) -> None:
        self.logout()

    @work(exclusive=True, group="logout")
    async def logout(self) -> None:
        try:
            await asyncio.to_thread(self.client.logout)
        except ClientError as exc:  # an API token cannot log out; a dead session is out already
            if exc.status not in (400, 401, 403):
                self.report_error(exc)
        await asyncio.to_thread(credentials.forget, self.client.url)
        self.set_token("")
        if SIGNED_OUT not in self._modes:
            self.add_mode(SIGNED_OUT, Screen)
        await self.switch_mode(SIGNED_OUT)
        for mode in [m for m in self._modes if m != SIGNED_OUT]:
            await self.remove_mode(mode)
        self.notify("logged out", title="z4j")
        self.prompt_login(f"logged out of {self.client.url}: log in again")

    def action_help(self) -> None:
        from z4j_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    # ---------------------------------------------------------------- keys, for help and palette

    def screen_bindings(self, screen: Screen) -> list[tuple[str, Binding]]:
        """(key shown, binding) of what the screen's keys do now, app keys last; no duplicates."""
        seen: set[str] = set()
        found: list[tuple[str, Binding]] = []
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if not binding.description or (active.node is self and key in {s.key for s in SCREENS.values()}):
                continue
            ident = f"{binding.action}:{binding.description}"
            if ident in seen:
                continue
            seen.add(ident)
            found.append((self.get_key_display(binding), binding))
        return found

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for spec in self.screen_specs:
            yield SystemCommand(f"Go to {spec.title}", spec.help or f"Open the {spec.title} screen  ({spec.key})",
                                lambda name=spec.name: self.goto(name))
        yield SystemCommand("Help", "Every key of this screen and the screens  (?)", self.action_help)
        yield SystemCommand("Light/dark", "Switch between the light and the dark theme  (ctrl+t)",
                            self.action_toggle_dark)
        for key, binding in self.screen_bindings(screen):
            if binding.action.startswith(("goto", "help", "toggle_dark", "app.quit", "command_palette")):
                continue
            yield SystemCommand(binding.description, f"{binding.tooltip or binding.description}  ({key})",
                                lambda b=binding: self.run_action(b.action, screen))

    # ---------------------------------------------------------------- errors and the connection

    def report_ok(self) -> None:
        self.last_error = None
        if not self.connected:
            self.connected = True
            self.notify(f"reconnected to {self.client.url}", title="collector", severity="information")

    def report_error(self, error: ClientError | str, title: str = "collector") -> None:
        message = str(error)
        if isinstance(error, ClientError) and error.status is None:
            if self.connected:
                self.connected = False
                self.notify(f"connection lost: {message}; retrying on its own", title=title,
                            severity="error", markup=False)
            self.last_error = message
            return
        if isinstance(error, ClientError) and error.status == 401 and (
                error.code in SESSION_GONE or (error.code == "unauthorized" and not self.client.token)):
            self.last_error = message
            self.prompt_login("session expired: log in again" if self.client.token else
                              f"log in to {self.client.url}")
            return
        if message == self.last_error:
            return
        self.last_error = message
        self.notify(message, title=title, severity="error", markup=False)


def tasks_screen(app: Z4jApp) -> TasksScreen:
    from z4j_tui.screens.tasks import TasksScreen

    return TasksScreen(app.client, app.project, app.refresh_interval)


register_screen(ScreenSpec("tasks", "Tasks", "1", tasks_screen, "Every task, newest first, live", order=0))


def run(argv: Sequence[str] | None = None) -> None:
    try:
        settings = Settings.from_args(argv, require_token=False)
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
