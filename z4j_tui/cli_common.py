"""What every ``z4j`` client command shares: options, output, passwords,
and resolving a user or agent given by e-mail/name or id."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

UrlOption = Annotated[str | None, typer.Option(
    "--url", help="Collector URL (default $Z4J_URL, else the URL you last logged in to, else http://127.0.0.1:7400)")]
ProjectOption = Annotated[str, typer.Option("--project", "-p", envvar="Z4J_PROJECT", help="Project slug")]
SinceOption = Annotated[str | None, typer.Option(help="ISO time, epoch or age (2h, 7d)")]
UntilOption = Annotated[str | None, typer.Option(help="ISO time, epoch or age")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout")]
PasswordStdinOption = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from the first line of stdin (else it is asked for, unechoed)")]


class CliError(Exception):
    """A command cannot go on; the message is the one line the user sees."""


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(*columns, box=None, pad_edge=False)
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row))
    Console(soft_wrap=True).print(out)


def note(message: str) -> None:
    """A diagnostic for the human (stderr), never data."""
    typer.echo(f"z4j: {message}", err=True)


def done(data: Any, as_json: bool, message: str) -> None:
    """The outcome of a change: JSON on stdout with --json, else one line on stderr."""
    if as_json:
        print_json(data)
    else:
        note(message)


def read_password(from_stdin: bool, prompt: str = "Password", confirm: bool = False) -> str:
    """The first line of stdin, or asked on the terminal without echo."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the password on: pass it on stdin with --password-stdin")
        password = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass(f"{prompt} (again): ") != password:
            raise CliError("the two passwords differ")
    if not password:
        raise CliError("empty password")
    return password


def pick(rows: list[dict[str, Any]], wanted: str, key: str, what: str,
         prefer: Callable[[dict[str, Any]], bool] = lambda row: True, id_key: str = "id") -> int:
    """The id of the row whose ``key`` is ``wanted`` (or whose id it is)."""
    if wanted.isdigit():
        return int(wanted)
    matches = [r for r in rows if str(r.get(key, "")).lower() == wanted.strip().lower()]
    best = [r for r in matches if prefer(r)] or matches
    if not best:
        raise CliError(f"no {what} {wanted!r}")
    return int(best[0][id_key])


def fetch_pages(fetch: Callable[[Any, int], tuple[list[dict[str, Any]], Any]], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` rows from a paged API: ``fetch(cursor, n)`` returns a
    page of at most n rows and the next cursor (None at the end)."""
    if limit < 1:
        raise CliError("--limit must be at least 1")
    rows: list[dict[str, Any]] = []
    cursor = None
    while len(rows) < limit:
        page, cursor = fetch(cursor, min(1000, limit - len(rows)))
        rows.extend(page)
        if cursor is None:
            break
    return rows
