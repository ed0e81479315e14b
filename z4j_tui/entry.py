"""Console entry points. Kept import-light so a worker that installed only
an engine extra gets a clear sentence, not a traceback, from ``z4j``."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from z4j_tui.cli import main as cli_main
    except ImportError as exc:
        sys.stderr.write(f"z4j: the command line needs the 'cli' extra ({exc.name} is missing): pip install 'z4j[cli]'\n")
        raise SystemExit(2) from None
    cli_main()


def tui_main() -> None:
    try:
        from z4j_tui.app import run
    except ImportError as exc:
        sys.stderr.write(f"z4j-tui: the terminal console needs the 'tui' extra ({exc.name} is missing): pip install 'z4j[tui]'\n")
        raise SystemExit(2) from None
    run()
