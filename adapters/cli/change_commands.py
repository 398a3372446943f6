"""The commands that change the ledger: adopt, snapshot, revert, swap-disk, delete, gc, recover,
reconcile and retire (with --dry-run, the plan only)."""

from __future__ import annotations

import os
from typing import Any

import click

from snapledger.adapters import results
from snapledger.adapters.cli import output
from snapledger.adapters.cli.arguments import pairs, read_file
from snapledger.adapters.cli.options import (
    after_command_options,
    command,
    dry_run_option,
    pass_context,
    snapshot_argument,
    vm_argument,
)
from snapledger.adapters.cli.session import Context
from snapledger.adapters.libvirt import DEFAULT_URI
from snapledger.adapters.service.adopt_libvirt import adopt_libvirt
from snapledger.domain.errors import BadInput
from snapledger.domain.steps import Plan
from snapledger.projections.documents import (
    adopted_domain_document,
    plan_document,
    reconcile_document,
    recover_document,
    retire_document,
    vm_document,
)


def _show_vm(c: Context, vm: str) -> None:
    """What a command that changed a VM prints: the VM as `show` gives it."""
    data = vm_document(c.ledger.view, vm)
    output.emit_json(recorded(c, data)) if c.as_json else output.show_vm(data)


def recorded(c: Context, document: dict[str, Any]) -> dict[str, Any]:
    """A changing command's JSON with its operation and position (results.py); one command per
    process, so every operation the service recorded is this command's."""
    return results.recorded(c.ledger, document)


@command()
@click.argument("vm")
@click.option("--disk", "disks", multiple=True, metavar="vda=PATH", help="A disk's active image.")
@click.option("--pool", "pools", multiple=True, metavar="DIR", help="Another directory the VM's files may be in (a template's, or one for overlays); every file of a disk's chain must be in a disk's directory or a pool.")
@click.option("--shared", "shared", multiple=True, metavar="DIR", help="A directory every host sees at the same path (NFS, a cluster filesystem): its files are one image for every host; the VM's files may be there too.")
@click.option("--xml", "xml_path", metavar="DOMAIN.xml", help="The domain definition to record.")
@click.option("--libvirt", is_flag=True, help="Adopt the libvirt domain VM, with its external snapshots.")
@click.option("--connect", metavar="URI", help="libvirt connection URI (default qemu:///system).")
@click.option("--keep-libvirt-metadata", is_flag=True,
              help="With --libvirt: keep libvirt's metadata of the imported snapshots (virsh can then "
                   "still act on them; see docs/libvirt.md).")
@after_command_options
@pass_context
def adopt(
    c: Context, vm: str, disks: tuple[str, ...], pools: tuple[str, ...], shared: tuple[str, ...],
    xml_path: str | None, libvirt: bool, connect: str | None, keep_libvirt_metadata: bool,
) -> None:
    """Start tracking a VM from its disk files, or a libvirt domain (--libvirt)."""
    for option, directories in (("--pool", pools), ("--shared", shared)):
        for directory in directories:  # a typo must not become a directory of the whole ledger
            if not os.path.isdir(directory):
                raise BadInput(f"{option} {directory}: no such directory")
    if libvirt or connect or keep_libvirt_metadata:
        if not libvirt:
            raise BadInput("--connect and --keep-libvirt-metadata go with --libvirt")
        if disks or xml_path:
            raise BadInput("adopt --libvirt reads the disks and the definition from libvirt: no --disk or --xml")
        ledger = c.ledger
        assert ledger.hypervisor is not None
        found = adopt_libvirt(
            ledger, ledger.hypervisor, vm, connect or DEFAULT_URI, pools, keep_metadata=keep_libvirt_metadata,
            shared=shared,
        )
        data = vm_document(ledger.view, vm)
        if c.as_json:
            output.emit_json(recorded(c, adopted_domain_document(data, found.left_alone, found.imported, found.notes)))
            return
        output.show_vm(data)
        for line in [f"left alone: {r}" for r in found.left_alone] + [f"note: {n}" for n in found.notes]:
            output.say(line)
        return
    xml = None
    if xml_path:
        from snapledger.adapters.libvirt.xml_input import domain_xml  # lxml: only for --xml

        xml = domain_xml(read_file(xml_path, "domain XML"))
    c.ledger.adopt(vm, pairs(disks, "--disk"), pools, xml, shared=shared)
    _show_vm(c, vm)


@command()
@vm_argument()
@click.argument("name", required=False)
@click.option("--overlay", "overlays", multiple=True, metavar="vda=PATH")
@click.option("--exclude", "excluded", multiple=True, metavar="DISK")
@click.option("--xml", "xml_path", metavar="SNAPSHOT.xml", help="libvirt <domainsnapshot> XML.")
@click.option("--description")
@dry_run_option
@after_command_options
@pass_context
def snapshot(
    c: Context, vm: str, name: str | None, overlays: tuple[str, ...], excluded: tuple[str, ...],
    xml_path: str | None, description: str | None, dry_run: bool,
) -> None:
    """Take an external disk snapshot. Without NAME: the UTC time, YYYYmmdd-HHMMSS."""
    chosen = pairs(overlays, "--overlay")
    skip = set(excluded)
    if xml_path:
        from snapledger.adapters.libvirt.xml_input import snapshot_request  # lxml: only for --xml

        request = snapshot_request(read_file(xml_path, "snapshot XML"))
        if request.name is not None and name is not None and request.name != name:
            raise BadInput(f"snapshot XML names {request.name!r}, the command {name!r}")
        name = name or request.name
        if set(request.overlays) & set(chosen):
            raise BadInput("a disk's overlay is given both in --xml and --overlay")
        chosen.update(request.overlays)
        skip |= request.excluded
        description = description or request.description
    if name is None:
        name = c.ledger.new_snapshot_name(vm)
    plan = c.ledger.snapshot(vm, name, chosen, skip, description, dry_run=dry_run)
    report(c, plan, dry_run, f"snapshot {name}")


@command()
@vm_argument()
@snapshot_argument()
@click.option("--overlay", "overlays", multiple=True, metavar="vda=PATH")
@click.option("--xml", "xml_path", metavar="REVERT.xml", help="The RFC's <domainsnapshotrevert>.")
@click.option("--running", is_flag=True, help="Start the libvirt domain again afterwards.")
@dry_run_option
@after_command_options
@pass_context
def revert(
    c: Context, vm: str, name: str, overlays: tuple[str, ...], xml_path: str | None, running: bool, dry_run: bool
) -> None:
    """Revert to a snapshot on new overlays; the abandoned present goes if nothing needs it."""
    if overlays and xml_path:
        raise BadInput("give either --overlay or --xml, not both")
    if xml_path:
        from snapledger.adapters.libvirt.xml_input import revert_overlays  # lxml: only for --xml

        chosen = revert_overlays(read_file(xml_path, "revert XML"))
    else:
        chosen = pairs(overlays, "--overlay")
    plan = c.ledger.revert(vm, name, chosen, dry_run=dry_run, running=running)
    report(c, plan, dry_run, f"revert to {name}")


@command("swap-disk")
@vm_argument()
@click.argument("disk")
@click.argument("path")
@after_command_options
@pass_context
def swap_disk(c: Context, vm: str, disk: str, path: str) -> None:
    """Record that the user put another image in place."""
    c.ledger.swap_disk(vm, disk, path)
    _show_vm(c, vm)


@command()
@vm_argument()
@snapshot_argument()
@click.option("--strategy", type=click.Choice(["auto", "commit", "pull"]), default="auto")
@click.option("--branches", type=click.Choice(["forbid", "pull", "keep"]), default="forbid")
@dry_run_option
@after_command_options
@pass_context
def delete(c: Context, vm: str, name: str, strategy: str, branches: str, dry_run: bool) -> None:
    """Delete a snapshot by the cheapest safe merge."""
    deletion = c.ledger.deletion(vm, name, strategy, branches, dry_run=dry_run)
    report(c, deletion.plan, dry_run, f"delete {name}", deletion.bytes_freed)


@command()
@vm_argument(required=False)
@click.option("--include-detached", is_flag=True)
@dry_run_option
@after_command_options
@pass_context
def gc(c: Context, vm: str | None, include_detached: bool, dry_run: bool) -> None:
    """Delete managed images nothing needs."""
    plans = [plan_document(plan, not dry_run) for plan in c.ledger.gc(vm, include_detached, dry_run)]
    if c.as_json:
        output.emit_json(results.operations_of(c.ledger, plans, 0))
        return
    if not plans:
        output.say("nothing to collect")
    for plan in plans:
        output.show_plan(plan, "gc")


@command()
@vm_argument(required=False)
@click.option("--pivoted", is_flag=True, help=(
    "Vouch that the live commit VM's open operation was at pivoted (a pivot by hand) and "
    "the domain ran on the commit's base since: the commit is taken as done."))
@after_command_options
@pass_context
def recover(c: Context, vm: str | None, pivoted: bool) -> None:
    """Finish operations a crash interrupted."""
    if pivoted and vm is None:
        raise BadInput("--pivoted vouches for one VM's operation: name the VM")
    finished = c.ledger.recover(vm, pivoted=pivoted)
    if c.as_json:
        done = c.ledger.recorded_operations()  # one per VM recovered
        output.emit_json({**recorded(c, recover_document(finished)), "operations": [op for op, _ in done]})
    else:
        output.say("\n".join(finished) if finished else "nothing to recover")


@command()
@vm_argument()
@click.option("--dry-run", is_flag=True, help="Show what would be recorded; record nothing.")
@after_command_options
@pass_context
def reconcile(c: Context, vm: str, dry_run: bool) -> None:
    """Record the disks' reality after drift (new identities, backings, files found or gone),
    writing and deleting no image."""
    found = c.ledger.reconcile(vm, dry_run=dry_run)
    done = c.ledger.recorded_operations()
    position = done[-1][1] if done else c.ledger.last_position()
    if c.as_json:
        output.emit_json({**reconcile_document(vm, dry_run, found, position), "operation_id": done[-1][0] if done else None})
        return
    if not found.changes:
        output.say(f"{vm}: the disks agree with the ledger; nothing to record")
        return
    for line in found.changes:
        output.say(line)
    output.say("dry run, nothing recorded" if dry_run else f"recorded at position {position}")


@command()
@vm_argument()
@after_command_options
@pass_context
def retire(c: Context, vm: str) -> None:
    """End tracking of a VM: its history stays, its images are let go, nothing is deleted."""
    left_behind = c.ledger.retire(vm)
    if c.as_json:
        output.emit_json(recorded(c, retire_document(vm, left_behind, c.ledger.last_position())))
        return
    output.say(f"{vm} is retired: no longer tracked; its history stays (snapledger log {vm})")
    for path in left_behind:
        output.say(f"left on disk (made by snapledger): {path}")


def report(c: Context, plan: Plan, dry_run: bool, title: str, bytes_freed: int | None = None) -> None:
    """A plan carried out (or, dry_run, only made)."""
    document = results.plan_result(c.ledger, plan, dry_run, 0, bytes_freed)
    output.emit_json(document) if c.as_json else output.show_plan(document, title)


@command()
@vm_argument()
@click.option("--keep-last", type=click.IntRange(0), default=0, metavar="N", help="The N newest.")
@click.option("--keep-hourly", type=click.IntRange(0), default=0, metavar="N",
              help="The newest of each of the last N hours that have one (UTC).")
@click.option("--keep-daily", type=click.IntRange(0), default=0, metavar="N")
@click.option("--keep-weekly", type=click.IntRange(0), default=0, metavar="N", help="ISO weeks.")
@click.option("--keep-monthly", type=click.IntRange(0), default=0, metavar="N")
@click.option("--keep-yearly", type=click.IntRange(0), default=0, metavar="N")
@click.option("--keep-within", metavar="DURATION", help="Every snapshot within DURATION of the newest (36h, 7d).")
@click.option("--match", metavar="GLOB", help="Only these snapshots are candidates.")
@click.option("--branches", type=click.Choice(["forbid", "pull", "keep"]), default="forbid",
              help="A branch point is kept (forbid), pulled into its branches, or its metadata deleted (keep).")
@dry_run_option
@after_command_options
@pass_context
def prune(
    c: Context, vm: str, keep_last: int, keep_hourly: int, keep_daily: int, keep_weekly: int,
    keep_monthly: int, keep_yearly: int, keep_within: str | None, match: str | None,
    branches: str, dry_run: bool,
) -> None:
    """Delete the snapshots no keep rule holds (restic's rules); the current one always stays."""
    rules = results.keep_rules(
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, match
    )
    pruned = c.ledger.prune(vm, rules, branches, dry_run=dry_run)
    document = results.prune_result(c.ledger, vm, pruned, 0)
    output.emit_json(document) if c.as_json else output.show_prune(document)


@command()
@vm_argument()
@click.option("--to", "to", required=True, metavar="HOST", help="The VM's new home host.")
@click.option("--take-over", is_flag=True, help=(
    "Run on the new host: take the VM from its home, which is dead (you vouch for that: fence "
    "it first); `recover` here then finishes what it left open."))
@after_command_options
@pass_context
def move(c: Context, vm: str, to: str, take_over: bool) -> None:
    """Give a VM a new home host (after a live migration); every image must be on shared storage."""
    c.ledger.move(vm, to, take_over)
    _show_vm(c, vm)


CHANGE_COMMANDS = (adopt, snapshot, revert, swap_disk, delete, gc, prune, recover, reconcile, retire, move)
