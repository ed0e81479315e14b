"""A task's workflow tree (chain, group, chord) from GET …/tasks/{id}/tree.

Each node shows its state and runtime as badges; enter on a task opens its
detail, space folds a group or chord. The cursor starts on the task asked for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, Tree
from textual.widgets.tree import TreeNode

from z4j_tui.client import Client, ClientError
from z4j_tui.screens import seconds, state_text


class DagTree(Tree[dict[str, Any]]):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open", tooltip="Open the task's detail", id="open-node"),
        Binding("space", "toggle_node", "Fold", tooltip="Fold or unfold a group or chord", id="fold-node"),
    ]


class DagScreen(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="back"),
                Binding("r", "reload", "Refresh", tooltip="Fetch the tree again", id="refresh-tree")]

    class Loaded(Message):
        def __init__(self, tree: dict[str, Any]) -> None:
            super().__init__()
            self.tree = tree

    class Failed(Message):
        def __init__(self, error: ClientError) -> None:
            super().__init__()
            self.error = error

    def __init__(self, client: Client, project: str, engine: str, task_id: str) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.engine = engine
        self.task_id = task_id

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading…", id="dag-summary")
        yield DagTree("workflow", id="dag")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"tree of {self.task_id}"
        tree = self.query_one("#dag", Tree)
        tree.show_root = False
        tree.focus()
        self.load()

    def action_reload(self) -> None:
        self.load()

    @work(exclusive=True, group="tree")
    async def load(self) -> None:
        try:
            tree = await asyncio.to_thread(self.client.task_tree, self.project, self.task_id, self.engine)
        except ClientError as exc:
            self.post_message(self.Failed(exc))
            return
        self.post_message(self.Loaded(tree))

    @on(Failed)
    def show_failure(self, message: Failed) -> None:
        self.query_one("#dag-summary", Static).update(Text(str(message.error)))
        self.app.report_error(message.error)

    @on(Loaded)
    def show_tree(self, message: Loaded) -> None:
        self.app.report_ok()
        data = message.tree
        summary = f"{data['nodes']} tasks, root {data['root_id']}"
        if data.get("truncated"):
            summary += f" (cut at {data['limit']}: the tasks closest to this one)"
        self.query_one("#dag-summary", Static).update(Text(summary))
        tree = self.query_one("#dag", Tree)
        tree.clear()
        variables = self.app.get_css_variables()
        found: list[TreeNode[dict[str, Any]]] = []

        def add(parent: TreeNode[dict[str, Any]], node: dict[str, Any]) -> None:
            label = node_label(node, variables, node.get("type") == "task" and node.get("task_id") == self.task_id)
            children = node.get("children") or []
            item = parent.add(label, data=node, expand=True, allow_expand=bool(children))
            if node.get("type") == "task" and node.get("task_id") == self.task_id:
                found.append(item)
            for child in children:
                add(item, child)

        for root in data.get("roots") or []:
            add(tree.root, root)
        if found:
            self.call_after_refresh(tree.move_cursor, found[0])

    @on(Tree.NodeSelected, "#dag")
    def open_node(self, event: Tree.NodeSelected) -> None:
        node = event.node.data or {}
        if node.get("type") == "task" and node.get("seen", True) and node.get("task_id"):
            self.app.open_task(self.engine, node["task_id"])


def node_label(node: dict[str, Any], variables: dict[str, str], asked: bool = False) -> Text:
    kind = node.get("type")
    label = Text()
    if node.get("role"):
        label.append(f"{node['role']}: ", style="dim")
    if kind == "task":
        label.append(node.get("name") or "(not published yet)", style="bold" if asked else "")
        label.append(f"  {node.get('task_id')}", style="dim")
    elif kind == "group":
        label.append(f"group of {node.get('size')}", style="italic")
        label.append(f"  {node.get('group_id')}", style="dim")
    else:
        label.append("chord", style="italic")
        label.append(f"  {node.get('chord_id')}", style="dim")
    state = node.get("state")
    if state:
        label.append("  [")
        label.append_text(state_text(state, variables))
        label.append("]")
    if node.get("runtime") is not None:
        label.append(f" {seconds(node['runtime'])}", style="dim")
    if kind == "task" and node.get("retries"):
        label.append(f" retries {node['retries']}", style="dim")
    if asked:
        label.append("  ◀", style="bold")
    return label
