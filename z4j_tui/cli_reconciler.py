"""``z4j reconciler show|set|run``: the project's reconciler settings, the
number of stuck tasks, and a pass on demand (docs/production.md#reconciler)."""

from __future__ import annotations

from typing import Annotated

import typer

from z4j_tui.cli_common import CliError, JsonOption, ProjectOption, UrlOption, done, print_json, table
from z4j_tui.client import Client

reconciler_app = typer.Typer(help="Close tasks stuck in received/started (worker gone or too long).",
                             no_args_is_help=True)
ValueOption = Annotated[str | None, typer.Option(help="A number, or 'default'")]
FIELDS = (("stuck_after_s", "stuck-after"), ("worker_offline_after_s", "worker-offline-after"),
          ("reconcile_batch", "batch"), ("lost_unprobed_after_s", "lost-unprobed-after"))


def show(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Settings in force, where each comes from, and how many tasks are stuck now (viewer)."""
    body = Client(url).request("GET", f"/api/v1/projects/{project}/reconciler")
    if as_json:
        print_json(body)
        return
    table(["setting", "value", "source"],
          [[key, body["settings"][key], "set" if body["project"][key] is not None else "default"]
           for key, _ in FIELDS])
    typer.echo(f"stuck now: {body['stuck']}; a pass every {body['interval_s']:g} s")


def set_(
    url: UrlOption = None,
    project: ProjectOption = "default",
    stuck_after: Annotated[str | None, typer.Option("--stuck-after", help="Seconds a task may run, or 'default'")] = None,
    worker_offline_after: Annotated[str | None, typer.Option(
        "--worker-offline-after", help="Seconds without news before a worker counts as gone, or 'default'")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Tasks per pass (1 to 10000), or 'default'")] = None,
    lost_unprobed_after: Annotated[str | None, typer.Option(
        "--lost-unprobed-after", help="Seconds gone before lost without a probe, or 'default'")] = None,
    as_json: JsonOption = False,
) -> None:
    """Change the project's reconciler settings (admin; audited); 'default' goes back to the default."""
    body: dict[str, float | None] = {}
    for (key, flag), value in zip(FIELDS, (stuck_after, worker_offline_after, batch, lost_unprobed_after)):
        if value is None:
            continue
        if value == "default":
            body[key] = None
            continue
        try:
            body[key] = float(value)
        except ValueError:
            raise CliError(f"--{flag} must be a number or 'default', got {value!r}") from None
    if not body:
        raise CliError("give one or more of " + ", ".join(f"--{flag}" for _, flag in FIELDS))
    result = Client(url).request("PUT", f"/api/v1/projects/{project}/reconciler", json=body)
    done(result, as_json, "reconciler: " + ", ".join(f"{k} {result['settings'][k]}" for k, _ in FIELDS))


def run(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Run one pass on the project now (operator; audited)."""
    result = Client(url).request("POST", f"/api/v1/projects/{project}/reconciler/run")
    done(result, as_json, "reconciler pass: " + ", ".join(
        f"{result[k]} {k.replace('_', ' ')}" for k in ("looked", "settled", "lost", "later", "no_agent")))
    for error in result.get("errors") or ():
        typer.echo(f"error: {error}", err=True)


def register(app: typer.Typer) -> None:
    reconciler_app.command("show")(show)
    reconciler_app.command("set")(set_)
    reconciler_app.command("run")(run)
    app.add_typer(reconciler_app, name="reconciler")
