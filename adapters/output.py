"""Everything the command line prints: JSON for scripts, rich tables and trees for people.

The only module that imports rich.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from snapledger.domain.steps import Plan, step_to_dict
from snapledger.projections.dag import ImageDag
from snapledger.projections.tree import SnapshotTree
from snapledger.projections.view import LedgerView

console = Console()
if not console.is_terminal:  # piped or logged: keep long paths on one line
    console.width = max(console.width, 200)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def error(message: str) -> None:
    errors.print(f"snapledger: error: {' '.join(message.split())}", markup=False)


def plan_json(plan: Plan, done: bool) -> dict[str, Any]:
    return {
        "kind": plan.kind,
        "strategy": plan.strategy,
        "done": done,
        "steps": [step_to_dict(step) for step in plan.steps],
        "bytes_moved": plan.bytes_moved,
        "notes": list(plan.notes),
    }


def show_plan(plan: Plan, done: bool, title: str) -> None:
    if not plan.steps:
        say(f"{title}: {plan.strategy or 'nothing to do'}")
        say("no storage steps; the ledger only" + (" recorded it" if done else " would record it"))
        return
    table = Table(title=f"{title}: {plan.strategy}" if plan.strategy else title)
    table.add_column("#", justify="right")
    table.add_column("action")
    table.add_column("details")
    table.add_column("bytes", justify="right")
    for i, step in enumerate(plan.steps, start=1):
        details = {k: v for k, v in step_to_dict(step).items() if k not in ("action", "bytes")}
        table.add_row(str(i), step.action, " ".join(f"{k}={v}" for k, v in details.items()), f"{step.bytes:,}")
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False)
    verb = "moved" if done else "would move"
    console.print(f"{'done' if done else 'dry run, nothing changed'}; {verb} {plan.bytes_moved:,} bytes", markup=False)


def vm_json(view: LedgerView, name: str) -> dict[str, Any]:
    vm = view.vms[name]
    dag = ImageDag(view)
    return {
        "vm": name,
        "current": vm.current,
        "domain_xml": vm.domain_xml,
        "disks": {
            disk: {"active": active, "chain": dag.chain(active)}
            for disk, active in sorted(vm.disks.items())
        },
        "snapshots": [
            {
                "name": snap.name,
                "parent": snap.parent,
                "created": snap.created,
                "description": snap.description,
                "disks": dict(snap.disks),
            }
            for snap in sorted(vm.snapshots.values(), key=lambda s: (s.created, s.name))
        ],
        "operation": None
        if vm.operation is None
        else {
            "id": vm.operation.op_id,
            "kind": vm.operation.kind,
            "done": vm.operation.done,
            "steps": len(vm.operation.steps),
            "failure": vm.operation.failure,
        },
    }


def show_vm(data: Mapping[str, Any]) -> None:
    console.print(f"VM {data['vm']}  current: {data['current'] or '-'}", markup=False)
    for disk, info in data["disks"].items():
        console.print(f"  {disk}: {' <- '.join(info['chain'])}", markup=False)
    if data["operation"]:
        op = data["operation"]
        console.print(f"  unfinished {op['kind']} {op['id']}: {op['done']}/{op['steps']} steps", markup=False)
    table = Table(title="snapshots")
    for column in ("name", "parent", "created", "frozen images"):
        table.add_column(column)
    for snap in data["snapshots"]:
        frozen = ", ".join(f"{d}={p}" for d, p in snap["disks"].items())
        table.add_row(snap["name"], snap["parent"] or "-", snap["created"], frozen)
    console.print(table)


def tree_json(tree: SnapshotTree) -> dict[str, Any]:
    return {
        "vm": tree.vm,
        "current": tree.current,
        "present": tree.present,
        "snapshots": {
            n.name: {"parent": n.parent, "children": list(n.children), "disks": n.frozen}
            for n in tree.nodes.values()
        },
        "branches": [list(b) for b in tree.branches()],
    }


def show_tree(tree: SnapshotTree) -> None:
    root = Tree(Text(tree.vm), guide_style="dim")

    def add(parent: Tree, name: str) -> None:
        node = tree.nodes[name]
        label = f"{name}{'  *current' if node.current else ''}"
        branch = parent.add(Text(label))
        if node.current:
            branch.add(Text(f"(present: {', '.join(f'{d}={p}' for d, p in tree.present.items())})"))
        for child in node.children:
            add(branch, child)

    for name in tree.roots:
        add(root, name)
    if tree.current is None:
        root.add(Text(f"(present: {', '.join(f'{d}={p}' for d, p in tree.present.items())})"))
    console.print(root)


def image_dag_json(view: LedgerView, name: str) -> dict[str, Any]:
    dag = ImageDag(view)
    vm = view.vms[name]
    frozen = vm.frozen_images()
    return {
        "vm": name,
        "images": {
            path: {
                "owner": dag.nodes[path].owner.value,
                "backing": dag.nodes[path].facts.backing,
                "freezes": frozen[path][0] if path in frozen else None,
                "active_for": [d for d, p in vm.disks.items() if p == path],
                "detached": dag.nodes[path].detached,
                "needed_because": [n.describe() for n in dag.nodes[path].needs],
            }
            for path in sorted(vm.images)
        },
    }


def show_image_dag(data: Mapping[str, Any]) -> None:
    images = data["images"]
    root = Tree(Text(f"images of {data['vm']} (bottom first)"))
    children: dict[str | None, list[str]] = {}
    for path, info in images.items():
        backing = info["backing"] if info["backing"] in images else None
        children.setdefault(backing, []).append(path)

    def label(path: str) -> str:
        info = images[path]
        marks = [info["owner"]]
        if info["freezes"]:
            marks.append(f"freezes {info['freezes']}")
        if info["active_for"]:
            marks.append(f"active {','.join(info['active_for'])}")
        if info["detached"]:
            marks.append("detached")
        return f"{path}  [{'; '.join(marks)}]"

    def add(parent: Tree, path: str) -> None:
        branch = parent.add(Text(label(path)))
        for child in sorted(children.get(path, [])):
            add(branch, child)

    for path in sorted(children.get(None, [])):
        add(root, path)
    console.print(root)


def show_rows(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    console.print(table)


def say(text: str) -> None:
    console.print(text, markup=False, highlight=False)


class MergeProgress:
    """A progress bar for a block operation (commit, pull), drawn on a terminal only and only
    once the operation has run for a second; fed with the fraction done by the storage adapter."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task: Any = None
        self._started: float | None = None
        self._last = 0.0

    def __call__(self, fraction: float) -> None:
        if not console.is_terminal:
            return
        now = time.monotonic()
        if self._started is None or fraction < self._last:  # a new operation began
            self.close()
            self._started = now
        self._last = fraction
        if self._bar is None and now - self._started >= 1.0 and fraction < 1.0:
            self._bar = Progress(
                TextColumn("merging"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                console=console, transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("merge", total=100.0)
        if self._bar is not None:
            self._bar.update(self._task, completed=fraction * 100.0)
        if fraction >= 1.0:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar, self._started, self._last = None, None, 0.0
