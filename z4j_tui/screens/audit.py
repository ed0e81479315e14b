"""Audit: the project's audit log, newest first, with the result of the
chain verification on top (a broken chain says where and how). The filter
sends ``action:…``, ``actor:…`` and ``outcome:…`` words to the collector
(``action:command.*`` is a prefix) and matches the other words in the rows.
Enter shows an entry's detail. Operators and above (PRODUCT.md §5)."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Input, Static

from z4j_tui.app import ScreenSpec, register_screen
from z4j_tui.client import ClientError
from z4j_tui.screens import when
from z4j_tui.widgets.listing import Listing, ListingTable, plain

PAGE = 200
SERVER_KEYS = ("action", "actor", "outcome")
OUTCOME_TONES = {"refused": "bad", "failed": "bad", "error": "bad", "denied": "bad", "sent": "", "ok": "good"}


def split_filter(text: str) -> tuple[dict[str, str], str]:
    """``action:x actor:y rest`` -> ({"action": "x", "actor": "y"}, "rest")."""
    server, rest = {}, []
    for word in text.split():
        key, sep, value = word.partition(":")
        if sep and key in SERVER_KEYS and value:
            server[key] = value
        else:
            rest.append(word)
    return server, " ".join(rest)


def verify_text(result: dict[str, Any] | None, error: str | None, tones: dict[str, str]) -> Text:
    if error is not None:
        return Text(f"chain not verified: {error}", style=tones.get("warn", ""))
    if result is None:
        return Text("verifying the chain…", style="dim")
    if result.get("ok"):
        if not result.get("rows"):
            return Text("✓ chain verified: no entries yet", style=tones.get("good", ""))
        anchored = f", anchored on checkpoint {result['anchored_on']}" if result.get("anchored_on") else ""
        return Text(f"✓ chain verified: {result['rows']} entries (seq {result['first_seq']}–{result['last_seq']}), "
                    f"{result.get('checkpoints_checked', 0)} checkpoint(s){anchored}, "
                    f"head {str(result.get('head_hash'))[:8]}", style=tones.get("good", ""))
    problems = result.get("problems") or []
    lines = [f"✗ CHAIN BROKEN: {len(problems)} problem(s) in {result.get('rows')} entries"]
    lines += [f"  seq {p.get('seq')}: {p.get('kind')}: {p.get('message')}" for p in problems[:3]]
    if len(problems) > 3:
        lines.append(f"  … and {len(problems) - 3} more (z4j audit verify lists them all)")
    return Text("\n".join(lines), style=f"bold {tones.get('bad', '')}".strip())


class AuditScreen(Listing):
    TITLE = "Audit"
    COLUMNS = (("seq", "seq"), ("time (UTC)", "ts"), ("outcome", "outcome"), ("action", "action"),
               ("target", "target"), ("actor", "actor"))
    FILTER_HINT = "action:command.* actor:ops@… outcome:refused, or any words…  (/)"
    BINDINGS = [
        Binding("v", "verify", "Verify", tooltip="Verify the audit chain again", id="verify-chain"),
        Binding("enter", "detail", "Detail", tooltip="Show the entry's detail", id="audit-detail", show=False),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_filter: dict[str, str] = {}
        self.verify: dict[str, Any] | None = None
        self.verify_error: str | None = None
        self.with_verify = True

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text("verifying the chain…", style="dim"), id="audit-verify")
        yield Static(id="listing-status")
        yield Input(placeholder=self.FILTER_HINT, id="listing-filter")
        yield ListingTable(id="listing", cursor_type="row", zebra_stripes=True)
        yield Static(id="audit-detail")
        yield Footer()

    def on_mount(self) -> None:
        detail = self.query_one("#audit-detail", Static)
        detail.border_title = "detail"
        detail.display = False

    def fetch(self) -> dict[str, Any]:
        page = self.client.audit(self.project, limit=PAGE, **self.server_filter)
        data: dict[str, Any] = {"rows": page["entries"], "more": page.get("next_before") is not None}
        if self.with_verify:
            try:
                data["verify"] = self.client.audit_verify(self.project)
            except ClientError as exc:
                data["verify_error"] = str(exc)
        return data

    def took(self, data: dict[str, Any]) -> None:
        if "verify" in data or "verify_error" in data:
            self.verify, self.verify_error = data.get("verify"), data.get("verify_error")
            self.with_verify = False  # once per open and per v: a long chain takes a while to check

    def show_rows(self) -> None:
        super().show_rows()
        if self.verify is not None or self.verify_error is not None:  # again with each answer: the theme may change
            panel = self.query_one("#audit-verify", Static)
            panel.update(verify_text(self.verify, self.verify_error, self.tones))
            panel.set_class(bool(self.verify) and not self.verify.get("ok"), "-broken")

    def row_key(self, row: dict[str, Any]) -> str:
        return str(row["id"])

    def cells(self, row: dict[str, Any]) -> tuple[Any, ...]:
        outcome = row.get("outcome") or ""
        return (str(row["seq"]), when(row["ts"]), self.toned(outcome, OUTCOME_TONES.get(outcome, "warn")),
                plain(row["action"]), plain(row["target"]), plain(row["actor"]))

    def text_of(self, row: dict[str, Any]) -> str:
        return " ".join(str(row.get(k) or "") for k in ("actor", "action", "target", "outcome", "source")) + \
            " " + json.dumps(row.get("detail") or {})

    def status(self) -> Text:
        where = " ".join(f"{k}:{v}" for k, v in self.server_filter.items())
        more = f" (the newest {PAGE})" if self.data.get("more") else ""
        shown = f"showing {len(self.shown)} of " if self.filter_text else ""
        return Text(f"{shown}{len(self.rows)} entries{more}" + (f" where {where}" if where else ""))

    def set_filter(self, text: str) -> None:
        server, rest = split_filter(text)
        if server != self.server_filter:
            self.server_filter = server
            self.reload()
        super().set_filter(rest)

    def action_verify(self) -> None:
        self.with_verify = True
        self.query_one("#audit-verify", Static).update(verify_text(None, None, {}))
        self.reload()

    @on(DataTable.RowSelected, "#listing")
    def action_detail(self) -> None:
        row = self.selected()
        detail = self.query_one("#audit-detail", Static)
        if row is None:
            return
        detail.display = True
        detail.border_title = f"seq {row['seq']} · {row['action']}"
        body = {k: row.get(k) for k in ("actor", "source", "target", "outcome")}
        body["detail"] = row.get("detail")
        body["hash"] = row.get("hash")
        detail.update(Text(json.dumps(body, indent=None, ensure_ascii=False)))


def _screen(app: Any) -> AuditScreen:
    return AuditScreen(app.client, app.project, app.refresh_interval)


register_screen(ScreenSpec("audit", "Audit", "5", _screen, "The audit log and its chain verification", order=50))
