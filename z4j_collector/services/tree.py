"""A task's workflow as a tree: chains, groups and chords (no SQL here).

What Celery records (docs/celery.md, "DAG"): every task has ``root_id`` (the
first task of the workflow) and ``parent_id`` (the task that published it);
a chain is parent -> child; group members share ``group_id``; chord header
members also carry ``chord_id`` (the callback's task id), and the callback
itself inherits the header's ``group_id`` and names the last header member to
finish as its parent. Members of a group sent from a client are their own
roots, so ``root_id`` alone does not reach them: the tree is the connected
set over root, group, chord and parent links, fetched a few indexed lookups
at a time and bounded by ``limit`` tasks.

Shape: ``{task_id, engine, root_id, nodes, truncated, limit, roots: [node]}``;
a node is ``{"type": "task"|"group"|"chord", ..., "children": [node]}``:

* task: its fields (state, engine_state, name, runtime, queue, worker,
  retries, exception, times); ``seen`` is false for a chord callback that
  is known by id but has not been published yet;
* group: ``group_id``, ``size``, ``states`` (count per state), a summary
  ``state``, the members as children;
* chord: ``chord_id`` (the callback's id), ``group_id``, ``states``, a
  summary ``state``; children are the header group then the callback
  (``role``: header, body).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from z4j_agents.protocol import TERMINAL_STATES
from z4j_collector.store.base import SqlStore

MAX_NODES = 5000
MAX_ROUNDS = 50
"""Lookups alternate between links (root -> group -> chord -> root ...);
past this many rounds the tree is reported truncated."""

_TASK_FIELDS = ("task_id", "name", "state", "engine_state", "queue", "worker", "runtime", "retries",
                "exception", "parent_id", "root_id", "group_id", "chord_id", "created_at", "started_at",
                "finished_at")


async def task_tree(store: SqlStore, project_id: int, task_id: str, engine: str | None = None,
                    limit: int = MAX_NODES) -> dict[str, Any] | None:
    """The tree around ``task_id``; None when the project has no such task."""
    start = await store.get_task(project_id, task_id, engine)
    if start is None:
        return None
    engine = start["engine"]
    tasks, truncated = await _collect(store, project_id, engine, {k: start[k] for k in _TASK_FIELDS}, limit)
    roots = nest(tasks)
    top = start["root_id"] or task_id
    return {"task_id": task_id, "engine": engine, "root_id": top, "nodes": len(tasks), "truncated": truncated,
            "limit": limit, "roots": roots}


async def _collect(store: SqlStore, project_id: int, engine: str, start: dict[str, Any],
                   limit: int) -> tuple[dict[str, dict[str, Any]], bool]:
    tasks: dict[str, dict[str, Any]] = {start["task_id"]: start}
    asked: dict[str, set[str]] = {"root_id": set(), "group_id": set(), "task_id": {start["task_id"]}}
    wanted: dict[str, set[str]] = {"root_id": set(), "group_id": set(), "task_id": set()}

    def want(task: dict[str, Any]) -> None:
        top = task["root_id"] or task["task_id"]
        wanted["root_id"].add(top)
        wanted["task_id"].add(top)
        for link in ("parent_id", "chord_id"):
            if task[link]:
                wanted["task_id"].add(task[link])
        if task["group_id"]:
            wanted["group_id"].add(task["group_id"])

    want(start)
    for _ in range(MAX_ROUNDS):
        todo = {column: sorted(values - asked[column] - (set(tasks) if column == "task_id" else set()))
                for column, values in wanted.items()}
        if not any(todo.values()):
            return tasks, False
        new: list[dict[str, Any]] = []
        for column, values in todo.items():
            if not values:
                continue
            asked[column].update(values)
            for row in await store.tree_tasks(project_id, engine, column, values, limit + 1):
                if row["task_id"] not in tasks:
                    tasks[row["task_id"]] = row
                    new.append(row)
                    if len(tasks) > limit:
                        del tasks[row["task_id"]]
                        return tasks, True
        for row in new:
            want(row)
    return tasks, True


def nest(tasks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Place every task once: chord callbacks in their chord, group members in
    their group, the rest under their parent (a chain is parent -> child);
    what has no known parent is a root. Pure, so bad links (cycles, a parent
    in another project) can only make a flatter tree, never a loop."""
    callbacks = {t["chord_id"] for t in tasks.values() if t["chord_id"]}

    def member_of(task: dict[str, Any]) -> str | None:
        # A chord callback inherits its header's group id but is no member;
        # neither is a task published by a member (its parent is in the group).
        group = task["group_id"]
        if not group or task["task_id"] in callbacks:
            return None
        parent = tasks.get(task["parent_id"] or "")
        if parent is not None and parent["group_id"] == group:
            return None
        return group

    members: dict[str, list[dict[str, Any]]] = {}
    for task in tasks.values():
        group = member_of(task)
        if group:
            members.setdefault(group, []).append(task)

    children: dict[str, list[tuple[str, str]]] = {}  # parent task id -> [(kind, key)]
    roots: list[tuple[str, str]] = []
    placed_bodies: set[str] = set()
    chords: dict[str, list[str]] = {}  # callback id -> header group ids

    for group, header in members.items():
        chord = next((m["chord_id"] for m in header if m["chord_id"]), None)
        if chord:
            if chord not in chords:
                chords[chord] = []
                _attach(children, roots, tasks, _common_parent(header), ("chord", chord))
            chords[chord].append(group)
            placed_bodies.add(chord)
        else:
            _attach(children, roots, tasks, _common_parent(header), ("group", group))
    for task in tasks.values():
        if task["task_id"] in placed_bodies or member_of(task):
            continue
        _attach(children, roots, tasks, task["parent_id"], ("task", task["task_id"]))

    done: set[tuple[str, str]] = set()

    def build(item: tuple[str, str]) -> dict[str, Any] | None:
        if item in done:
            return None
        done.add(item)
        kind, key = item
        if kind == "task":
            node = _task_node(tasks.get(key), key)
            node["children"] = _built(children.get(key, []), build)
            return node
        if kind == "group":
            return _group_node(key, _sorted(members[key]), build)
        headers = [_group_node(g, _sorted(members[g]), build, role="header") for g in chords[key] if ("group", g) not in done]
        for g in chords[key]:
            done.add(("group", g))
        body = build(("task", key)) or _task_node(None, key)
        body["role"] = "body"
        everyone = [t for g in chords[key] for t in members[g]] + [tasks.get(key) or {"state": None}]
        node = {"type": "chord", "chord_id": key, "group_id": chords[key][0], **_summary(everyone),
                "children": [*headers, body]}
        return node

    out = _built(roots, build)
    # Whatever a cycle of bad parent links kept out of reach becomes a root.
    for item in [i for items in children.values() for i in items]:
        if item not in done:
            node = build(item)
            if node is not None:
                out.append(node)
    return out


def _attach(children: dict[str, list[tuple[str, str]]], roots: list[tuple[str, str]],
            tasks: dict[str, dict[str, Any]], parent: str | None, item: tuple[str, str]) -> None:
    if parent and parent in tasks and parent != item[1]:
        children.setdefault(parent, []).append(item)
    else:
        roots.append(item)


def _common_parent(header: list[dict[str, Any]]) -> str | None:
    counts = Counter(t["parent_id"] for t in header if t["parent_id"])
    return counts.most_common(1)[0][0] if counts else None


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda t: (t["created_at"], t["task_id"]))


def _built(items: list[tuple[str, str]], build) -> list[dict[str, Any]]:
    nodes = [n for n in (build(i) for i in items) if n is not None]
    nodes.sort(key=lambda n: (n.get("created_at") or 0.0, n.get("task_id") or n.get("chord_id") or n.get("group_id")))
    return nodes


def _task_node(task: dict[str, Any] | None, task_id: str) -> dict[str, Any]:
    if task is None:  # a chord callback not published yet
        node = {k: None for k in _TASK_FIELDS}
        node.update(type="task", task_id=task_id, seen=False)
        return node
    return {"type": "task", **task, "seen": True}


def _group_node(group: str, header: list[dict[str, Any]], build, role: str | None = None) -> dict[str, Any]:
    kids = []
    for member in header:
        node = build(("task", member["task_id"]))
        if node is None:
            # a member placed elsewhere already (bad links); keep the count honest
            node = _task_node(member, member["task_id"])
            node["children"] = []
        kids.append(node)
    node = {"type": "group", "group_id": group, "size": len(header), **_summary(header), "children": kids}
    if role:
        node["role"] = role
    return node


def _summary(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per state, one summary state, and the wall time it took."""
    states = Counter(t["state"] or "pending" for t in tasks)
    if all(s in TERMINAL_STATES for s in states):
        bad = [s for s in ("failure", "revoked", "rejected", "lost") if s in states]
        state = bad[0] if bad else "success"
    elif set(states) == {"pending"}:
        state = "pending"
    else:
        state = "started"
    started = [t.get("started_at") for t in tasks if t.get("started_at")]
    created = [t.get("created_at") for t in tasks if t.get("created_at")]
    finished = [t.get("finished_at") for t in tasks]
    first = min(started) if started else None
    last = max(finished) if finished and all(finished) and state != "started" and state != "pending" else None
    return {"state": state, "states": dict(states), "created_at": min(created) if created else None,
            "started_at": first, "finished_at": last,
            "runtime": (last - first) if first is not None and last is not None else None}
