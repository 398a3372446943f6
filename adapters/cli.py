"""The `snapledger` command: a thin click layer over the service (contract: shared/design/cli.md).

Each command parses its arguments, calls one service method, and hands the result to `output`.
User mistakes print one line `snapledger: error: ...` on stderr and exit with the code of
semantics.md; they never show a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from snapledger.domain.errors import BadInput, Refused, SnapledgerError
from snapledger.domain.names import check_disk_target
from snapledger.projections.trail import trail
from snapledger.projections.tree import snapshot_tree

from . import output
from .compose import open_ledger
from .qemu_img import QemuImgStorage
from .service import Snapledger
from .xml_input import domain_xml, revert_overlays, snapshot_request

F = TypeVar("F", bound=Callable[..., Any])


class DriftReported(Refused):
    """verify found the ledger and the disks disagreeing (exit 3)."""


class Context:
    def __init__(self, store: str | None, as_json: bool, actor: str | None, reason: str | None):
        self.store = store
        self.as_json = as_json
        self.actor = actor
        self.reason = reason
        self._ledger: Snapledger | None = None

    @property
    def ledger(self) -> Snapledger:
        if self._ledger is None:
            storage = QemuImgStorage()
            storage.progress = output.MergeProgress()
            self._ledger = open_ledger(self.store, storage)
        return self._ledger


def json_option(command: F) -> F:
    """`--json` is accepted after the command too (`snapledger show vm --json`)."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(Context).as_json = True  # type: ignore[union-attr]
        return value

    return click.option(
        "--json", "as_json", is_flag=True, expose_value=False, callback=remember, help="JSON output"
    )(command)


def pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """`vda=PATH` pairs."""
    out: dict[str, str] = {}
    for value in values:
        disk, sep, path = value.partition("=")
        if not sep or not path:
            raise BadInput(f"{option} takes DISK=PATH, got {value!r}")
        check_disk_target(disk)
        if disk in out:
            raise BadInput(f"{option} names disk {disk!r} twice")
        out[disk] = path
    return out


def read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise BadInput(f"can't read {what} {path}: {error.strerror}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="SNAPLEDGER_STORE", help="Store URL (sqlite:////abs/path, postgresql://...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--actor", envvar="SNAPLEDGER_ACTOR", help="Who acts (recorded with every event).")
@click.option("--reason", help="Why (recorded with every event).")
@click.version_option(package_name="snapledger")
@click.pass_context
def cli(ctx: click.Context, store: str | None, as_json: bool, actor: str | None, reason: str | None) -> None:
    """Keep the complete history of external VM disk snapshots; revert to and delete any of them."""
    ctx.obj = Context(store, as_json, actor, reason)


pass_context = click.make_pass_decorator(Context)


@cli.command()
@click.argument("vm")
@click.option("--disk", "disks", multiple=True, metavar="vda=PATH", help="A disk's active image.")
@click.option("--pool", "pools", multiple=True, metavar="DIR", help="A directory overlays may go in.")
@click.option("--xml", "xml_path", metavar="DOMAIN.xml", help="The domain definition to record.")
@click.option("--libvirt", is_flag=True, help="Adopt a libvirt domain (not available yet).")
@click.option("--connect", metavar="URI", help="libvirt connection URI.")
@json_option
@pass_context
def adopt(
    c: Context, vm: str, disks: tuple[str, ...], pools: tuple[str, ...], xml_path: str | None, libvirt: bool, connect: str | None
) -> None:
    """Start tracking a VM from its disk files."""
    if libvirt or connect:
        raise BadInput("adopt --libvirt is not available in this version; use --disk vda=PATH")
    xml = domain_xml(read_file(xml_path, "domain XML")) if xml_path else None
    c.ledger.adopt(vm, pairs(disks, "--disk"), pools, xml)
    data = output.vm_json(c.ledger.view, vm)
    output.emit_json(data) if c.as_json else output.show_vm(data)


@cli.command()
@click.argument("vm")
@click.argument("name")
@click.option("--overlay", "overlays", multiple=True, metavar="vda=PATH")
@click.option("--exclude", "excluded", multiple=True, metavar="DISK")
@click.option("--xml", "xml_path", metavar="SNAPSHOT.xml", help="libvirt <domainsnapshot> XML.")
@click.option("--description")
@click.option("--dry-run", is_flag=True)
@json_option
@pass_context
def snapshot(
    c: Context, vm: str, name: str, overlays: tuple[str, ...], excluded: tuple[str, ...],
    xml_path: str | None, description: str | None, dry_run: bool,
) -> None:
    """Take an external disk snapshot."""
    chosen = pairs(overlays, "--overlay")
    skip = set(excluded)
    if xml_path:
        request = snapshot_request(read_file(xml_path, "snapshot XML"))
        if request.name is not None and request.name != name:
            raise BadInput(f"snapshot XML names {request.name!r}, the command {name!r}")
        if set(request.overlays) & set(chosen):
            raise BadInput("a disk's overlay is given both in --xml and --overlay")
        chosen.update(request.overlays)
        skip |= request.excluded
        description = description or request.description
    plan = c.ledger.snapshot(vm, name, chosen, skip, description, dry_run=dry_run)
    report(c, plan, dry_run, f"snapshot {name}")


@cli.command()
@click.argument("vm")
@click.argument("name")
@click.option("--overlay", "overlays", multiple=True, metavar="vda=PATH")
@click.option("--xml", "xml_path", metavar="REVERT.xml", help="The RFC's <domainsnapshotrevert>.")
@click.option("--running", is_flag=True, help="Start the VM afterwards (libvirt; not available yet).")
@click.option("--dry-run", is_flag=True)
@json_option
@pass_context
def revert(
    c: Context, vm: str, name: str, overlays: tuple[str, ...], xml_path: str | None, running: bool, dry_run: bool
) -> None:
    """Revert to a snapshot on new overlays; the abandoned present goes if nothing needs it."""
    if overlays and xml_path:
        raise BadInput("give either --overlay or --xml, not both")
    if running:
        raise BadInput("--running needs libvirt, which this version does not drive yet")
    chosen = revert_overlays(read_file(xml_path, "revert XML")) if xml_path else pairs(overlays, "--overlay")
    plan = c.ledger.revert(vm, name, chosen, dry_run=dry_run)
    report(c, plan, dry_run, f"revert to {name}")


@cli.command("swap-disk")
@click.argument("vm")
@click.argument("disk")
@click.argument("path")
@json_option
@pass_context
def swap_disk(c: Context, vm: str, disk: str, path: str) -> None:
    """Record that the user put another image in place."""
    c.ledger.swap_disk(vm, disk, path)
    data = output.vm_json(c.ledger.view, vm)
    output.emit_json(data) if c.as_json else output.show_vm(data)


@cli.command()
@click.argument("vm")
@click.argument("name")
@click.option("--strategy", type=click.Choice(["auto", "commit", "pull"]), default="auto")
@click.option("--branches", type=click.Choice(["forbid", "pull", "keep"]), default="forbid")
@click.option("--dry-run", is_flag=True)
@json_option
@pass_context
def delete(c: Context, vm: str, name: str, strategy: str, branches: str, dry_run: bool) -> None:
    """Delete a snapshot by the cheapest safe merge."""
    plan = c.ledger.delete(vm, name, strategy, branches, dry_run=dry_run)
    report(c, plan, dry_run, f"delete {name}")


@cli.command()
@click.argument("vm", required=False)
@click.option("--include-detached", is_flag=True)
@click.option("--dry-run", is_flag=True)
@json_option
@pass_context
def gc(c: Context, vm: str | None, include_detached: bool, dry_run: bool) -> None:
    """Delete managed images nothing needs."""
    plans = c.ledger.gc(vm, include_detached, dry_run)
    if c.as_json:
        output.emit_json([output.plan_json(p, not dry_run) for p in plans])
        return
    if not plans:
        output.say("nothing to collect")
    for plan in plans:
        output.show_plan(plan, not dry_run, "gc")


@cli.command()
@click.argument("vm", required=False)
@json_option
@pass_context
def recover(c: Context, vm: str | None) -> None:
    """Finish operations a crash interrupted."""
    finished = c.ledger.recover(vm)
    if c.as_json:
        output.emit_json({"finished": finished})
    else:
        output.say("\n".join(finished) if finished else "nothing to recover")


@cli.command()
@click.argument("vm", required=False)
@json_option
@pass_context
def verify(c: Context, vm: str | None) -> None:
    """Check the ledger against the disks; exit 3 on any finding."""
    findings = c.ledger.verify(vm)
    if c.as_json:
        output.emit_json({"ok": not findings, "findings": findings})
    else:
        output.say("\n".join(findings) if findings else "ok: the disks agree with the ledger")
    if findings:
        raise DriftReported(f"verify: {len(findings)} finding(s); the ledger and the disks disagree")


@cli.command("list")
@json_option
@pass_context
def list_vms(c: Context) -> None:
    """The VMs in the ledger."""
    view = c.ledger.refresh()
    rows = [
        {
            "vm": vm.name,
            "current": vm.current,
            "snapshots": len(vm.snapshots),
            "disks": dict(vm.disks),
            "operation": vm.operation.kind if vm.operation else None,
        }
        for vm in sorted(view.vms.values(), key=lambda v: v.name)
    ]
    if c.as_json:
        output.emit_json(rows)
    else:
        output.show_rows(
            "VMs", ["vm", "current", "snapshots", "unfinished"],
            [[r["vm"], r["current"], r["snapshots"], r["operation"]] for r in rows],
        )


@cli.command()
@click.argument("vm")
@json_option
@pass_context
def show(c: Context, vm: str) -> None:
    """A VM's state now."""
    c.ledger.vm(vm)  # unknown VM: a clear error
    data = output.vm_json(c.ledger.refresh(), vm)
    output.emit_json(data) if c.as_json else output.show_vm(data)


@cli.command()
@click.argument("vm")
@click.option("--images", is_flag=True, help="Draw the image DAG instead.")
@json_option
@pass_context
def tree(c: Context, vm: str, images: bool) -> None:
    """The snapshot tree (current marked); with --images the image DAG."""
    view = c.ledger.refresh()
    snapshots = snapshot_tree(view, vm)
    if images:
        data = output.image_dag_json(view, vm)
        output.emit_json(data) if c.as_json else output.show_image_dag(data)
    else:
        output.emit_json(output.tree_json(snapshots)) if c.as_json else output.show_tree(snapshots)


@cli.command()
@click.argument("vm", required=False)
@json_option
@pass_context
def log(c: Context, vm: str | None) -> None:
    """The audit trail."""
    if vm is not None:
        c.ledger.vm(vm)
    entries = [e for e in trail(c.ledger.app.events_after(0)) if vm is None or e.vm == vm]
    if c.as_json:
        output.emit_json([e.to_json() for e in entries])
    else:
        output.show_rows(
            "audit trail", ["#", "time", "vm", "event", "summary"],
            [[e.position, e.time, e.vm or e.image, e.type, e.summary] for e in entries],
        )


def report(c: Context, plan: Any, dry_run: bool, title: str) -> None:
    if c.as_json:
        output.emit_json(output.plan_json(plan, not dry_run))
    else:
        output.show_plan(plan, not dry_run, title)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="snapledger", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.Abort:
        output.error("aborted")
        return 1
    except click.UsageError as error:
        output.error(error.format_message())
        return 2
    except SnapledgerError as error:
        output.error(str(error))
        return error.exit_code
    except SystemExit as done:
        return int(done.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
