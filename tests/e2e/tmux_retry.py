"""The console over a real terminal, by keyboard only: ``z4j demo`` in a tmux
session (its own tmux server), then, asserting on ``tmux capture-pane`` at
each step:

1. the demo opens the console logged in (the task list, live);
2. filter the failed card charges (``/``, ``state:failure name:shop.charge_card``, enter);
3. open one (enter): its detail, with the gateway's traceback;
4. retry it (``R``, then ``y``): "retried <id> as <new id>";
5. back to the list, filter that order's charges: the new run succeeded;
6. Ctrl-C: the demo stops every process it started and exits 0.

    python tests/e2e/tmux_retry.py [--screenshot docs/tui-tasks.svg]  (Z4J_E2E_KEEP=1: keep the session to look at)

Exit 0 when every step held; 1 with the step, the reason and the pane when
one did not; 77 (skip) when tmux is missing and cannot be installed.
``--screenshot`` writes the live task list (step 1) as an SVG, from the
pane's own colours.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 120, 36
STEP_TIMEOUT_S = 60.0
START_TIMEOUT_S = 150.0
SKIP = 77


class StepFailed(Exception):
    pass


def ensure_tmux() -> str | None:
    """tmux's path, installing it with apt when missing; None when that cannot be done."""
    found = shutil.which("tmux")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([*sudo, "apt-get", "update", "-qq"], [*sudo, "apt-get", "install", "-y", "-qq", "tmux"]):
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
    return shutil.which("tmux")


class Terminal:
    """One tmux server (private socket) with one session running ``command``."""

    def __init__(self, tmux: str, command: str, env: dict[str, str]) -> None:
        self.tmux = tmux
        self.socket = f"z4j-e2e-{uuid.uuid4().hex[:8]}"
        self.target = "demo"
        self.run("new-session", "-d", "-s", self.target, "-x", str(WIDTH), "-y", str(HEIGHT), command, env=env)

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True, env=env,
                             timeout=30)
        if out.returncode != 0:
            raise StepFailed(f"tmux {args[0]}: {out.stderr.strip()}")
        return out.stdout

    def pane(self, colours: bool = False) -> str:
        return self.run("capture-pane", "-p", "-t", self.target, *(["-e"] if colours else []))

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", self.target, *(["-l"] if literal else []), *keys)

    def pane_pid(self) -> int:
        return int(self.run("list-panes", "-t", self.target, "-F", "#{pane_pid}").split()[0])

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def wait(term: Terminal, what: str, holds: Callable[[str], object], timeout: float = STEP_TIMEOUT_S) -> object:
    """Poll the pane until ``holds(text)`` answers something true."""
    deadline = time.monotonic() + timeout
    while True:
        text = term.pane()
        answer = holds(text)
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out waiting for {what}")
        time.sleep(0.25)


def footer(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def table_focused(text: str) -> bool:
    """The task list's table has the focus: its own binding (⏎ Open) is in the footer."""
    return "Open" in footer(text) and "Retry" in footer(text)


def filter_focused(text: str) -> bool:
    return "Open" not in footer(text)


def rows(text: str) -> list[str]:
    """The task rows shown (a row starts with its creation time)."""
    return [ln for ln in text.splitlines() if re.search(r"│ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", ln)]


def field(text: str) -> str:
    """The filter field's text (the line under the counts)."""
    lines = text.splitlines()
    return lines[3].strip(" ▊▎") if len(lines) > 3 else ""


def toasts(text: str) -> str:
    """The notifications' text, their wrapped lines joined (a toast is drawn right of a ▌)."""
    return " ".join(ln.split("▌", 1)[1].strip(" │") for ln in text.splitlines() if "▌" in ln)


def type_filter(term: Terminal, words: str) -> None:
    """``/``, clear the field, type ``words``, enter; back on the table, the field still reading them."""
    # The field selects its text a moment after it gets the focus, and what is
    # typed before that is replaced: type until the field reads the words. On a
    # loaded CI machine, twice: five tries left the focused field empty, and once
    # the field read the words, enter was pressed, and the table came back
    # unfiltered with the field empty. Each new try leaves the field and comes
    # back to it; a try that did not hold says so on stdout, and a failure says
    # what the field read.
    for attempt in range(5):
        wait(term, "the task list's table to have the focus", table_focused)
        term.keys("/", literal=True)
        wait(term, "the filter field to have the focus", filter_focused)
        term.keys("C-u")
        term.keys(words, literal=True)
        try:
            wait(term, f"the filter field to read {words!r}", lambda text: field(text) == words, 10)
        except StepFailed:
            if attempt == 4:
                raise StepFailed(f"the filter field reads {field(term.pane())!r}, not {words!r}, after 5 tries") from None
            print(f"try {attempt + 1}: the field reads {field(term.pane())!r}, not {words!r}; again", flush=True)
            term.keys("Escape")
            continue
        term.keys("Enter")
        wait(term, "the table to have the focus again", table_focused)
        try:
            wait(term, f"the filter field to keep {words!r}", lambda text: field(text) == words, 5)
            return
        except StepFailed:
            if attempt == 4:
                raise StepFailed(f"after enter the filter field reads {field(term.pane())!r}, not {words!r}, "
                                 "after 5 tries") from None
            print(f"try {attempt + 1}: after enter the field reads {field(term.pane())!r}, not {words!r}; again",
                  flush=True)


def save_svg(ansi: str, path: Path) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(width=WIDTH, height=HEIGHT, record=True, file=open(os.devnull, "w"), force_terminal=True,
                      color_system="truecolor")
    console.print(Text.from_ansi(ansi.rstrip("\n")), end="")
    path.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(path), title="z4j demo — z4j-tui")


def step(n: int, text: str) -> None:
    print(f"ok {n}: {text}", flush=True)


def drive(term: Terminal, screenshot: Path | None) -> None:
    # 1. logged in by the demo: the live task list, with failed card charges among the rows
    wait(term, "the console's task list with a failed card charge", lambda text: "● live" in text and any(
        "failure" in r and "shop.charge_card" in r for r in rows(text)), START_TIMEOUT_S)
    if screenshot is not None:
        time.sleep(2)  # a few more rows of traffic for the screenshot
        save_svg(term.pane(colours=True), screenshot)
    step(1, "the demo opened the console logged in; the task list is live")

    # 2. only the failed card charges
    type_filter(term, "state:failure name:shop.charge_card")
    shown = wait(term, "only failed card charges", lambda text: (r := rows(text)) and all(
        "failure" in x and "shop.charge_card" in x for x in r) and r)
    step(2, f"filtered: {len(shown)} failed card charges")

    # 3. open the one under the cursor
    term.keys("Enter")
    title = wait(term, "a failed charge's detail", lambda text: re.search(
        r"shop\.charge_card\s+([0-9a-f-]{36})", text.splitlines()[0]) if "GatewayTimeout" in text else None)
    task_id = title.group(1)
    detail = term.pane()
    order = re.search(r"ord-\d+", detail)
    if "state failure" not in detail or order is None:
        raise StepFailed("the detail does not show the failure and its order")
    step(3, f"opened {task_id} ({order.group(0)}): state failure, GatewayTimeout traceback")

    # 4. retry it
    term.keys("R", literal=True)
    wait(term, "the retry confirmation", lambda text: f"Retry task {task_id}" in text and "y: do it" in text)
    term.keys("y", literal=True)
    new_id = wait(term, "the retry's notification", lambda text: (m := re.search(
        rf"retried {task_id} as ([0-9a-f-]{{36}})", toasts(text))) and m.group(1))
    step(4, f"retried {task_id} as {new_id}")

    # 5. the order's charges: the old run failed, the new one succeeded
    term.keys("Escape")
    type_filter(term, f"name:shop.charge_card {order.group(0)}")
    wait(term, f"{new_id} to succeed", lambda text: any(new_id in r and "success" in r for r in rows(text)))
    final = rows(term.pane())
    if not any(task_id in r and "failure" in r for r in final):
        raise StepFailed(f"the original run {task_id} is not shown as failed beside its retry")
    step(5, f"{order.group(0)}: {task_id} failure, its retry {new_id} success")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", type=Path, help="write the live task list as an SVG here")
    parser.add_argument("--python", default=sys.executable, help="the Python whose z4j runs the demo")
    args = parser.parse_args()
    tmux = ensure_tmux()
    if tmux is None:
        print("skip: tmux is not installed and `apt-get install -y tmux` did not work", flush=True)
        return SKIP
    home = Path(tempfile.mkdtemp(prefix="z4j-e2e-"))
    # COLUMNS and LINES (pytest sets them) would override the pane's size in Textual.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("Z4J_", "TMUX")) and k not in ("COLUMNS", "LINES")}
    env.update(Z4J_HOME=str(home), TERM="xterm-256color")
    status = home / "demo-exit"
    z4j = f"{args.python} -c 'from z4j_tui.entry import main; main()'"
    # The shell stays after the demo so its last lines and exit code can be read.
    # (Textual draws on stderr: the demo's own last lines land in the pane too.)
    command = f"cd {ROOT} && {z4j} demo; echo $? > {status}; sleep 600"
    term = Terminal(tmux, command, env)
    try:
        drive(term, args.screenshot)
        # 6. Ctrl-C stops the demo and everything it started
        term.keys("C-c")
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        code = status.read_text().strip() if status.exists() else "(still running)"
        if code != "0" or "every process it started has stopped" not in term.pane():
            raise StepFailed(f"z4j demo after Ctrl-C: exit {code}")
        step(6, "Ctrl-C: the demo stopped every process it started and exited 0")
        return 0
    except StepFailed as exc:
        before = term.pane()
        time.sleep(3)
        moving = "still drawing" if term.pane() != before else "not changing"
        lines = before.splitlines()
        # the reason last: a CI log keeps the end of the output
        print(f"--- the pane ({moving}):\n{before}\n--- counts: {lines[1].strip() if len(lines) > 1 else ''}"
              f"\n--- field: {field(before)!r}\n--- footer: {footer(before).strip()}\nFAILED: {exc}", flush=True)
        return 1
    finally:
        if os.environ.get("Z4J_E2E_KEEP"):  # debugging: leave the session for `tmux -L <socket> attach`
            print(f"kept: tmux -L {term.socket} attach -t {term.target}", flush=True)
            input("press enter to end it ")
        term.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
