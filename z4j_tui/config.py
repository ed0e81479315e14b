"""What the console is told to connect to: command line over environment.

Identity and logins come later; for now the console uses a project API token
from ``$Z4J_API_TOKEN``, as scripts do (PRODUCT.md §4).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from z4j_tui.client import DEFAULT_URL

NO_TOKEN = (
    "no API token: on the collector host run `z4j admin create-token --role viewer`, "
    "then `export Z4J_API_TOKEN=…` and start z4j-tui again"
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
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(prog="z4j-tui", description="z4j terminal console.")
        parser.add_argument("--url", default=env.get("Z4J_URL") or DEFAULT_URL,
                            help=f"collector URL (default $Z4J_URL or {DEFAULT_URL})")
        parser.add_argument("--project", default=env.get("Z4J_PROJECT") or "default",
                            help="project slug (default $Z4J_PROJECT or 'default')")
        args = parser.parse_args(argv)
        token = env.get("Z4J_API_TOKEN", "").strip()
        if not token:
            raise ConfigError(NO_TOKEN)
        return cls(url=args.url, token=token, project=args.project)
