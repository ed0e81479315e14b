"""What the console is told to connect to: command line over environment.

The URL: --url, else ``$Z4J_URL``, else the URL last logged in to. The
token: ``$Z4J_API_TOKEN`` (as scripts do, PRODUCT.md §4), else the session
``z4j login`` stored for that URL (z4j_tui.credentials).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from z4j_tui import credentials

NO_TOKEN = (
    "not logged in to {url}: run `z4j login --url {url} --email YOU`, or on the collector host "
    "`z4j admin create-token --role viewer`, then `export Z4J_API_TOKEN=…` and start z4j-tui again"
)


class ConfigError(ValueError):
    """The console cannot start; the message says what to do."""


@dataclass(frozen=True)
class Settings:
    url: str
    """Base URL of the collector's REST API."""
    token: str
    """Project API token, sent as a bearer token."""
    project: str
    """Slug of the project whose tasks are shown."""

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, *,
                  require_token: bool = True) -> Settings:
        """``require_token=False``: the console, which asks for a login itself; the token is then ""."""
        env = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(prog="z4j-tui", description="z4j terminal console.")
        parser.add_argument("--url", default=None,
                            help=f"collector URL (default $Z4J_URL, else the URL you last logged in to, "
                                 f"else {credentials.DEFAULT_URL})")
        parser.add_argument("--project", default=env.get("Z4J_PROJECT") or "default",
                            help="project slug (default $Z4J_PROJECT or 'default')")
        args = parser.parse_args(argv)
        try:
            url = credentials.resolve_url(args.url, env)
            token = credentials.resolve_token(url, env)
        except credentials.CredentialsError as exc:
            raise ConfigError(str(exc)) from None
        if not token and require_token:
            raise ConfigError(NO_TOKEN.format(url=url))
        return cls(url=url, token=token or "", project=args.project)
