"""Screens of the terminal console, and the formatting they share."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.text import Text

# Task states, each with the theme variable that colours it.
STATE_COLORS = {
    "failure": "text-error",
    "lost": "text-error",
    "success": "text-success",
    "retry": "text-warning",
    "revoked": "text-warning",
    "rejected": "text-warning",
    "started": "text-accent",
    "received": "text-primary",
    "pending": "text-muted",
}


def when(ts: float | None) -> str:
    """UTC, like the ``z4j`` command line, so the two can be compared."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


def plain(value: object) -> Text:
    """Server data as literal text: task names, exceptions and the redaction
    mask "[redacted]" must never be read as Rich markup."""
    return Text("" if value is None else str(value))


def state_text(state: str, variables: dict[str, str]) -> Text:
    color = variables.get(STATE_COLORS.get(state, ""), "")
    # "text-muted" is a blend ("auto 60%"), not a colour Rich understands.
    style = color if color.startswith("#") else "dim" if color else ""
    return Text(state, style=style)
