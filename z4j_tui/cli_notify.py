"""``z4j notify``: notification channels (e-mail, Slack, Telegram, webhook)
through the collector's API: list, create, delete, send a test, and the
delivery log. Secrets (webhook secret, bot token, Slack URL) are never shown."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from z4j_tui.cli_common import CliError, JsonOption, ProjectOption, UrlOption, done, pick, print_json, table, when
from z4j_tui.client import Client

notify_app = typer.Typer(help="Notifications: channels, rules and the delivery log.", no_args_is_help=True)
channels_app = typer.Typer(help="Notification channels: list, create, delete, test.", no_args_is_help=True)

ChannelArgument = Annotated[str, typer.Argument(help="Channel name or id")]
_BASE = "/api/v1/projects/{project}/notifications"
KINDS = ("email", "slack", "telegram", "webhook")


def _channel_id(client: Client, project: str, wanted: str) -> int:
    return pick(client.request("GET", f"{_BASE.format(project=project)}/channels"), wanted, "name", "channel")


def _describe(row: dict[str, Any]) -> str:
    config = row.get("config") or {}
    if row["kind"] == "email":
        return ", ".join(config.get("to") or [])
    if row["kind"] == "telegram":
        return f"chat {config.get('chat_id')}"
    return str(config.get("url") or config.get("webhook_url") or "")


def list_channels(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Channels of the project, secrets masked (viewer)."""
    rows = Client(url).request("GET", f"{_BASE.format(project=project)}/channels")
    if as_json:
        print_json(rows)
        return
    table(["id", "name", "kind", "target", "enabled", "changed"],
          [[r["id"], r["name"], r["kind"], _describe(r), "yes" if r["enabled"] else "no", when(r["updated_at"])]
           for r in rows])


def create(kind: Annotated[str, typer.Argument(help="email, slack, telegram or webhook")],
           name: Annotated[str, typer.Argument(help="Channel name")],
           to: Annotated[list[str] | None, typer.Option("--to", help="email: a recipient (repeat for more)")] = None,
           target_url: Annotated[str | None, typer.Option("--target", help="slack: the incoming-webhook URL; "
                                                                           "webhook: the URL to POST to")] = None,
           secret: Annotated[str | None, typer.Option("--secret", envvar="Z4J_NOTIFY_SECRET",
                                                      help="webhook: HMAC secret (16+ characters)")] = None,
           bot_token: Annotated[str | None, typer.Option("--bot-token", envvar="Z4J_TELEGRAM_BOT_TOKEN",
                                                         help="telegram: the bot's token")] = None,
           chat_id: Annotated[str | None, typer.Option("--chat-id", help="telegram: chat id or @channel")] = None,
           api_base: Annotated[str | None, typer.Option("--api-base", help="telegram: Bot API base URL")] = None,
           disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled")] = False,
           url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Create a channel (admin)."""
    if kind not in KINDS:
        raise CliError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    given = {"to": to or None, "target": target_url, "secret": secret, "bot_token": bot_token, "chat_id": chat_id,
             "api_base": api_base}
    wanted = {"email": ("to",), "slack": ("target",), "telegram": ("bot_token", "chat_id", "api_base"),
              "webhook": ("target", "secret")}[kind]
    # --secret and --bot-token may come from the environment: ignored where they do not apply
    extra = [k for k, v in given.items() if v is not None and k not in wanted and k not in ("secret", "bot_token")]
    if extra:
        raise CliError(f"{'an' if kind == 'email' else 'a'} {kind} channel takes no --{extra[0].replace('_', '-')}")
    config: dict[str, Any] = {k: v for k, v in given.items() if v is not None and k in wanted}
    if "target" in config:
        config["webhook_url" if kind == "slack" else "url"] = config.pop("target")
    body = {"kind": kind, "name": name, "config": config, "enabled": not disabled}
    row = Client(url).request("POST", f"{_BASE.format(project=project)}/channels", json=body)
    done(row, as_json, f"channel {row['name']} ({row['kind']}) created, id {row['id']}")


def delete(channel: ChannelArgument, url: UrlOption = None, project: ProjectOption = "default",
           as_json: JsonOption = False) -> None:
    """Delete a channel (admin)."""
    client = Client(url)
    cid = _channel_id(client, project, channel)
    client.request("DELETE", f"{_BASE.format(project=project)}/channels/{cid}")
    done({"id": cid, "deleted": True}, as_json, f"channel {channel} deleted")


def test(channel: ChannelArgument, url: UrlOption = None, project: ProjectOption = "default",
         as_json: JsonOption = False) -> None:
    """Send a test message now (operator); exits 1 when it was not delivered."""
    client = Client(url)
    cid = _channel_id(client, project, channel)
    out = client.request("POST", f"{_BASE.format(project=project)}/channels/{cid}/test")
    if as_json:
        print_json(out)
    elif out["status"] == "sent":
        typer.echo(f"test message sent on {out['channel_name']} ({out['attempts']} attempt(s))")
    if out["status"] != "sent":
        raise CliError(f"test message {out['status']} on {out['channel_name']} after {out['attempts']} "
                       f"attempt(s): {out['error']}")


def deliveries(url: UrlOption = None, project: ProjectOption = "default",
               channel: Annotated[str | None, typer.Option(help="Only this channel (name or id)")] = None,
               status: Annotated[str | None, typer.Option(help="pending, sent, failed or refused")] = None,
               limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
               as_json: JsonOption = False) -> None:
    """The delivery log (viewer)."""
    client = Client(url)
    params: dict[str, Any] = {"limit": limit}
    if channel is not None:
        params["channel_id"] = _channel_id(client, project, channel)
    if status is not None:
        params["status"] = status
    rows = client.request("GET", f"{_BASE.format(project=project)}/deliveries", params=params)
    if as_json:
        print_json(rows)
        return
    table(["id", "time", "channel", "kind", "source", "status", "attempts", "error"],
          [[r["id"], when(r["created_at"]), r["channel_name"], r["kind"], r["source"], r["status"], r["attempts"],
            r["error"] or ""] for r in rows])


rules_app = typer.Typer(help="Notification rules: list, create, delete.", no_args_is_help=True)
RULE_KINDS = ("task_failed", "failure_rate", "task_lost", "task_stuck", "worker_offline", "queue_depth")


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise CliError(f"--param takes key=value, got {text!r}")
    for convert in (int, float):
        try:
            return key.strip(), convert(value)
        except ValueError:
            pass
    return key.strip(), value


def _rule_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def list_rules(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Rules of the project (viewer)."""
    client = Client(url)
    rows = client.request("GET", f"{_BASE.format(project=project)}/rules")
    if as_json:
        print_json(rows)
        return
    names = {c["id"]: c["name"] for c in client.request("GET", f"{_BASE.format(project=project)}/channels")}
    table(["id", "name", "kind", "params", "channels", "cooldown", "enabled"],
          [[r["id"], r["name"], r["kind"], _rule_params(r["params"]),
            ", ".join(names.get(c, str(c)) for c in r["channel_ids"]), f"{r['cooldown_s']:g} s",
            "yes" if r["enabled"] else "no"] for r in rows])


def create_rule(kind: Annotated[str, typer.Argument(help=", ".join(RULE_KINDS))],
                name: Annotated[str, typer.Argument(help="Rule name")],
                channel: Annotated[list[str], typer.Option("--channel", help="A channel (name or id) to send on; "
                                                                            "repeat for more")],
                param: Annotated[list[str] | None, typer.Option(
                    "--param", help="key=value: name, queue, worker (filters, * wildcard), threshold, "
                                    "window_minutes, min_finished, stuck_after_s, offline_after_s, depth")] = None,
                cooldown: Annotated[float | None, typer.Option("--cooldown", help="Seconds between messages of "
                                                                                  "one condition (300)")] = None,
                disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled")] = False,
                url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Create a rule (admin)."""
    if kind not in RULE_KINDS:
        raise CliError(f"kind must be one of {', '.join(RULE_KINDS)}, got {kind!r}")
    client = Client(url)
    body: dict[str, Any] = {"kind": kind, "name": name, "params": dict(_param(p) for p in param or []),
                            "channel_ids": [_channel_id(client, project, c) for c in channel],
                            "enabled": not disabled}
    if cooldown is not None:
        body["cooldown_s"] = cooldown
    row = client.request("POST", f"{_BASE.format(project=project)}/rules", json=body)
    done(row, as_json, f"rule {row['name']} ({row['kind']}) created, id {row['id']}")


def delete_rule(rule: Annotated[str, typer.Argument(help="Rule name or id")], url: UrlOption = None,
                project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Delete a rule (admin)."""
    client = Client(url)
    rid = pick(client.request("GET", f"{_BASE.format(project=project)}/rules"), rule, "name", "rule")
    client.request("DELETE", f"{_BASE.format(project=project)}/rules/{rid}")
    done({"id": rid, "deleted": True}, as_json, f"rule {rule} deleted")


def register(app: typer.Typer) -> None:
    rules_app.command("list")(list_rules)
    rules_app.command("create")(create_rule)
    rules_app.command("delete")(delete_rule)
    notify_app.add_typer(rules_app, name="rules")
    channels_app.command("list")(list_channels)
    channels_app.command()(create)
    channels_app.command()(delete)
    channels_app.command()(test)
    notify_app.add_typer(channels_app, name="channels")
    notify_app.command()(deliveries)
    app.add_typer(notify_app, name="notify")
