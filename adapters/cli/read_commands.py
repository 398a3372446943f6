"""The commands that read the ledger: list, show, diff, tree, explain and usage."""

from __future__ import annotations

import json
import os.path

import click

from snapledger.adapters.cli import output
from snapledger.adapters.cli.options import (
    after_command_options,
    command,
    complete_snapshot,
    pass_context,
    vm_argument,
)
from snapledger.adapters.cli.session import Context
from snapledger.adapters.service.points import diff_points, snapshot_info
from snapledger.adapters.service.queries import past_view
from snapledger.projections.documents import (
    image_dag_document,
    tree_document,
    usage_document,
    vm_document,
    vm_rows,
)
from snapledger.projections.explain import explain_image
from snapledger.projections.pictures import image_picture
from snapledger.projections.tree import snapshot_tree


@command("list")
@click.option("--mine", is_flag=True, help="Only the VMs that live on this host.")
@after_command_options
@pass_context
def list_vms(c: Context, mine: bool) -> None:
    """The VMs in the ledger, with the host each lives on."""
    rows = vm_rows(c.ledger.refresh(), c.ledger.host if mine else None)
    if c.as_json:
        output.emit_json(rows)
    else:
        output.show_rows(
            "VMs", ["vm", "host", "current", "snapshots", "unfinished"],
            [[r["vm"], r["host"], r["current"], r["snapshots"], r["operation"]] for r in rows],
        )


@command()
@vm_argument()
@click.argument("snapshot", required=False, shell_complete=complete_snapshot)
@click.option("--at-event", type=int, metavar="N", help="The state right after ledger position N (log --json).")
@click.option("--at", "at_time", metavar="TIME", help="The state at TIME (ISO 8601; naive is UTC).")
@after_command_options
@pass_context
def show(c: Context, vm: str, snapshot: str | None, at_event: int | None, at_time: str | None) -> None:
    """A VM's state now, or in the past; with SNAPSHOT, that snapshot in detail."""
    if snapshot is not None:
        data = snapshot_info(c.ledger, vm, snapshot, at_event, at_time)
        output.emit_json(data) if c.as_json else output.show_snapshot(data)
        return
    if at_event is not None or at_time is not None:
        data = vm_document(past_view(c.ledger, vm, at_event, at_time), vm)
    elif (stored := c.stored_show_text(vm)) is not None:
        data = json.loads(stored)  # the persisted document: nothing folded (entry.py prints it as is)
    else:
        data = vm_document(c.ledger.view_of_one(vm), vm)
    output.emit_json(data) if c.as_json else output.show_vm(data)


@command()
@vm_argument()
@click.argument("start", metavar="A", shell_complete=complete_snapshot)
@click.argument("end", metavar="B", shell_complete=complete_snapshot)
@after_command_options
@pass_context
def diff(c: Context, vm: str, start: str, end: str) -> None:
    """What changed for a VM from A to B: each a ledger position (0: the empty ledger), a
    snapshot (where it was taken) or an ISO 8601 time; `pos:`, `name:`, `at:` say which."""
    data = diff_points(c.ledger, vm, start, end)
    output.emit_json(data) if c.as_json else output.show_diff(data)


@command()
@vm_argument()
@click.option("--images", is_flag=True, help="Draw the image DAG instead.")
@after_command_options
@pass_context
def tree(c: Context, vm: str, images: bool) -> None:
    """The snapshot tree (current marked); with --images the image DAG."""
    view = c.ledger.refresh()
    if images:
        data = image_dag_document(image_picture(view, vm), vm)
        output.emit_json(data) if c.as_json else output.show_image_dag(data)
    else:
        data = tree_document(snapshot_tree(view, vm))
        output.emit_json(data) if c.as_json else output.show_tree(data)


@command()
@vm_argument()
@click.argument("path")
@after_command_options
@pass_context
def explain(c: Context, vm: str, path: str) -> None:
    """Why an image is kept, what may be done with it, and which deletions would free it."""
    dependants = c.ledger.unknown_dependants(vm)
    view = c.ledger.refresh()
    data = explain_image(view, vm, os.path.abspath(path), c.ledger.cost, dependants).to_json()
    output.emit_json(data) if c.as_json else output.show_explain(data)


@command()
@click.argument("vm", required=False)
@after_command_options
@pass_context
def usage(c: Context, vm: str | None) -> None:
    """Space: per snapshot the bytes allocated in its frozen images and those a delete would
    free now, per image its allocated bytes and owner (measured on the disks)."""
    data = usage_document(c.ledger.usage(vm))
    output.emit_json(data) if c.as_json else output.show_usage(data)


READ_COMMANDS = (list_vms, show, diff, tree, explain, usage)
