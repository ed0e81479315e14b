"""The help screen: every key of the screen below it, and the keys that open the screens."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close", id="close-help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(id="help-body")

    def on_mount(self) -> None:
        pane = self.query_one("#help")
        pane.border_title = "keys"
        pane.border_subtitle = "escape closes · ctrl+p finds any of these by name"
        below = self.app.screen_stack[-2] if len(self.app.screen_stack) > 1 else self
        self.query_one("#help-body", Static).update(self.keys_table(below))

    def keys_table(self, screen: Screen) -> Table:
        from z4j_tui.app import Z4jApp

        app = self.app
        assert isinstance(app, Z4jApp)
        table = Table(box=None, show_header=False, pad_edge=False, expand=True)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(ratio=1)
        table.add_row(Text("screens", style="underline"), "")
        for spec in app.screen_specs:
            table.add_row(spec.key, Text(f"{spec.title}" + (f" — {spec.help}" if spec.help else "")))
        table.add_row("", "")
        title = screen.title or type(screen).__name__.removesuffix("Screen").lower()
        table.add_row(Text("this screen", style="underline"), Text(title, style="dim"))
        for key, binding in app.screen_bindings(screen):
            table.add_row(key, Text(binding.description + (f" — {binding.tooltip}" if binding.tooltip else "")))
        table.add_row("ctrl+p", "command palette: screens and actions by name")
        table.add_row("ctrl+q", "quit")
        return table
