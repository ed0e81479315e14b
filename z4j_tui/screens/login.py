"""Logging in (e-mail and password, POST /api/v1/auth/login) and picking a project.

Both are modal: the screen below keeps its state, and after a session
expired the console carries on where it was once the login succeeds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option

from z4j_tui import credentials
from z4j_tui.client import Client, ClientError
from z4j_tui.config import NO_TOKEN


class LoginScreen(ModalScreen[str | None]):
    """Dismissed with the new session token, or None on escape."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="cancel-login")]

    def __init__(self, client: Client, reason: str = "") -> None:
        super().__init__()
        self.client = client
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(id="login"):
            yield Static(Text(self.reason or f"log in to {self.client.url}"), id="login-reason")
            yield Input(placeholder="e-mail", id="login-email")
            yield Input(placeholder="password", password=True, id="login-password")
            yield Button("Log in", id="login-button", variant="primary")
            yield Static(id="login-error")
            yield Static(Text(NO_TOKEN.format(url=self.client.url).replace("not logged in to", "no account? For")
                              .split(": run", 1)[0] + ": a token in $Z4J_API_TOKEN works too", style="dim"),
                         id="login-hint")

    def on_mount(self) -> None:
        self.query_one("#login").border_title = "z4j login"
        stored = credentials.load(self.client.url) if credentials.default_url() else None
        email = self.query_one("#login-email", Input)
        if stored is not None and stored.email:
            email.value = stored.email
            self.query_one("#login-password", Input).focus()
        else:
            email.focus()

    @on(Input.Submitted, "#login-email")
    def next_field(self) -> None:
        self.query_one("#login-password", Input).focus()

    @on(Input.Submitted, "#login-password")
    @on(Button.Pressed, "#login-button")
    def submit(self) -> None:
        email = self.query_one("#login-email", Input).value.strip()
        password = self.query_one("#login-password", Input).value
        if not email or not password:
            self.query_one("#login-error", Static).update(Text("e-mail and password, please", style="bold"))
            return
        self.query_one("#login-error", Static).update(Text("logging in…"))
        self.log_in(email, password)

    @work(exclusive=True, group="login")
    async def log_in(self, email: str, password: str) -> None:
        try:
            answer = await asyncio.to_thread(self.client.login, email, password)
        except ClientError as exc:
            self.query_one("#login-error", Static).update(Text(str(exc), style="bold"))
            self.query_one("#login-password", Input).value = ""
            return
        token = answer["token"]
        try:  # like `z4j login`: the next start needs no password
            await asyncio.to_thread(credentials.save, self.client.url, token, email)
        except credentials.CredentialsError as exc:
            self.notify(f"logged in, but the login is not stored: {exc}", severity="warning", markup=False)
        self.dismiss(token)


class ProjectScreen(ModalScreen[str | None]):
    """Dismissed with the chosen project's slug, or None on escape."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="cancel-project")]

    def __init__(self, client: Client, current: str) -> None:
        super().__init__()
        self.client = client
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="projects"):
            yield OptionList(id="project-list")
            yield Static(id="projects-error")

    def on_mount(self) -> None:
        self.query_one("#projects").border_title = "projects (enter switches)"
        self.query_one("#project-list").focus()
        self.load()

    @work(exclusive=True, group="projects")
    async def load(self) -> None:
        try:
            projects: list[dict[str, Any]] = await asyncio.to_thread(self.client.projects)
        except ClientError as exc:
            self.query_one("#projects-error", Static).update(Text(str(exc)))
            projects = [{"slug": self.current, "name": ""}]
        options = self.query_one("#project-list", OptionList)
        for project in projects:
            slug = project["slug"]
            label = Text.assemble((slug, "bold" if slug == self.current else ""),
                                  (f"  {project.get('name') or ''}", "dim"), ("  (current)" if slug == self.current else ""))
            options.add_option(Option(label, id=slug))
        index = next((i for i, p in enumerate(projects) if p["slug"] == self.current), 0)
        options.highlighted = index

    @on(OptionList.OptionSelected, "#project-list")
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
