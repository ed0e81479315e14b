"""The console's Must show over a real terminal: tests/e2e/tmux_retry.py runs
`z4j demo` in tmux and, by keyboard only, filters the failed tasks, opens one,
retries it and sees the retry succeed, then stops the demo with Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("tmux_retry.py")


@pytest.mark.timeout(900)
def test_retry_a_failed_task_by_keyboard_in_tmux():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=840)
    if out.returncode == 77:
        pytest.skip(out.stdout.strip() or "tmux is not installed and could not be installed")
    if out.returncode != 0:  # the script's output ends with the reason
        pytest.fail(f"{out.stderr}\n{out.stdout}", pytrace=False)
    assert [line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("ok ")] == [
        f"ok {n}" for n in range(1, 7)], out.stdout
