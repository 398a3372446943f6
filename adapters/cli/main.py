"""The `snapledger` command: a thin click layer over the service (reference: docs/cli.md).

Each command parses its arguments, calls one service method, and hands the result to `output`.
Errors print one line `snapledger: error: ...` on stderr and exit with the code of semantics.md:
a user's mistake, a broken store, a missing extra, and (as a last resort, `main`) anything
unexpected. None shows a traceback unless SNAPLEDGER_DEBUG=1.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from snapledger.adapters.cli.arguments import check_text, pairs, read_file, replay_command
from snapledger.adapters.cli.session import READING_COMMANDS, Context
from snapledger.domain.errors import (
    BadInput,
    LedgerDamaged,
    Refused,
    SnapledgerError,
    TamperFound,
    UnknownVm,
)
from snapledger.projections.documents import (
    adopted_domain_document,
    image_dag_document,
    plan_document,
    reconcile_document,
    recover_document,
    retire_document,
    tree_document,
    verify_document,
    vm_document,
    vm_rows,
)

# Only click and the lines above are imported at start: `show VM --json` answers from the
# persisted projection before eventsourcing, rich or the domain are imported (about 60 ms
# instead of 250 ms of imports; docs/performance.md). Every command imports what it uses;
# tests/unit/test_projection.py checks that importing this module stays light.
if TYPE_CHECKING:
    from snapledger.adapters.cli import output
else:

    class _Deferred(ModuleType):
        """A module imported on first use."""

        def __getattr__(self, name: str) -> Any:
            return getattr(importlib.import_module(self.__name__), name)

    output = _Deferred("snapledger.adapters.cli.output")

F = TypeVar("F", bound=Callable[..., Any])


class DriftReported(Refused):
    """verify found the ledger and the disks disagreeing (exit 3)."""


def after_command_options(command: F) -> F:
    """`--json`, `--actor` and `--reason` are accepted after the command too
    (`snapledger show vm --json`, `snapledger snapshot vm s1 --reason "before upgrade"`)."""

    def remember(ctx: click.Context, param: click.Parameter, value: object) -> object:
        if value:
            check_text(_param_name(ctx, param), [value])
            setattr(ctx.find_object(Context), str(param.name), value)
        return value

    command = click.option("--reason", expose_value=False, callback=remember, help="Why (recorded with every event).")(command)
    command = click.option("--actor", expose_value=False, callback=remember, help="Who acts (recorded with every event).")(command)
    return click.option(
        "--json", "as_json", is_flag=True, expose_value=False, callback=remember, help="JSON output"
    )(command)


def _param_name(ctx: click.Context, param: click.Parameter) -> str:
    """How an error names a parameter: `--reason`, `VM`, or the variable it came from."""
    if param.name and ctx.get_parameter_source(param.name) == ParameterSource.ENVIRONMENT:
        return str(param.envvar)
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name


def _check_params(ctx: click.Context) -> None:
    for param in ctx.command.get_params(ctx):
        value = ctx.params.get(param.name or "")
        if value is None or param.type is click.UNPROCESSED:  # replay's command checks its own
            continue
        check_text(_param_name(ctx, param), value if isinstance(value, tuple) else [value])


class CheckedCommand(click.Command):
    """A command whose arguments are checked as text once parsed (adapters/cli/arguments.py)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        _check_params(ctx)
        return rest


class CheckedGroup(click.Group):
    command_class = CheckedCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        _check_params(ctx)
        return rest


def reads_only(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--dry-run's callback: the command then only reads (READING_COMMANDS)."""
    context = ctx.find_object(Context)
    if value and context is not None:
        context.reading = True
    return value


dry_run_option = click.option("--dry-run", is_flag=True, callback=reads_only, help="Show the plan; change nothing.")


@click.group(cls=CheckedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="SNAPLEDGER_STORE", help="Store URL (sqlite:////abs/path, postgresql://...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--actor", envvar="SNAPLEDGER_ACTOR", help="Who acts (recorded with every event).")
@click.option("--reason", help="Why (recorded with every event).")
@click.version_option(package_name="snapledger")
@click.pass_context
def cli(ctx: click.Context, store: str | None, as_json: bool, actor: str | None, reason: str | None) -> None:
    """Keep the complete history of external VM disk snapshots; revert to and delete any of them."""
    c = ctx.ensure_object(Context)
    if not c.fixed:  # replay passes the replayed ledger's context in
        c.store, c.as_json, c.actor, c.reason = store, as_json, actor, reason
        c.reading = ctx.invoked_subcommand in READING_COMMANDS


pass_context = click.make_pass_decorator(Context)


@cli.command()
@click.argument("vm")
@click.option("--disk", "disks", multiple=True, metavar="vda=PATH", help="A disk's active image.")
@click.option("--pool", "pools", multiple=True, metavar="DIR", help="Another directory the VM's files may be in (a template's, or one for overlays); every file of a disk's chain must be in a disk's directory or a pool.")
@click.option("--xml", "xml_path", metavar="DOMAIN.xml", help="The domain definition to record.")
@click.option("--libvirt", is_flag=True, help="Adopt the libvirt domain VM, with its external snapshots.")
@click.option("--connect", metavar="URI", help="libvirt connection URI (default qemu:///system).")
@click.option("--keep-libvirt-metadata", is_flag=True,
              help="With --libvirt: keep libvirt's metadata of the imported snapshots (virsh can then "
                   "still act on them; see docs/libvirt.md).")
@after_command_options
@pass_context
def adopt(
    c: Context, vm: str, disks: tuple[str, ...], pools: tuple[str, ...], xml_path: str | None, libvirt: bool,
    connect: str | None, keep_libvirt_metadata: bool,
) -> None:
    """Start tracking a VM from its disk files, or a libvirt domain (--libvirt)."""
    from snapledger.adapters.libvirt.xml_input import domain_xml

    if libvirt or connect or keep_libvirt_metadata:
        if not libvirt:
            raise BadInput("--connect and --keep-libvirt-metadata go with --libvirt")
        if disks or xml_path:
            raise BadInput("adopt --libvirt reads the disks and the definition from libvirt: no --disk or --xml")
        from snapledger.adapters.libvirt.hypervisor import DEFAULT_URI
        from snapledger.adapters.service.adopt_libvirt import adopt_libvirt

        ledger = c.ledger
        assert ledger.hypervisor is not None
        found = adopt_libvirt(
            ledger, ledger.hypervisor, vm, connect or DEFAULT_URI, pools, keep_metadata=keep_libvirt_metadata
        )
        data = vm_document(ledger.view, vm)
        if c.as_json:
            output.emit_json(adopted_domain_document(data, found.left_alone, found.imported, found.notes))
            return
        output.show_vm(data)
        for line in [f"left alone: {r}" for r in found.left_alone] + [f"note: {n}" for n in found.notes]:
            output.say(line)
        return
    xml = domain_xml(read_file(xml_path, "domain XML")) if xml_path else None
    c.ledger.adopt(vm, pairs(disks, "--disk"), pools, xml)
    data = vm_document(c.ledger.view, vm)
    output.emit_json(data) if c.as_json else output.show_vm(data)


@cli.command()
@click.argument("vm")
@click.argument("name")
@click.option("--overlay", "overlays", multiple=True, metavar="vda=PATH")
@click.option("--exclude", "excluded", multiple=True, metavar="DISK")
@click.option("--xml", "xml_path", metavar="SNAPSHOT.xml", help="libvirt <domainsnapshot> XML.")
@click.option("--description")
@dry_run_option
@after_command_options
@pass_context
def snapshot(
    c: Context, vm: str, name: str, overlays: tuple[str, ...], excluded: tuple[str, ...],
    xml_path: str | None, description: str | None, dry_run: bool,
) -> None:
    """Take an external disk snapshot."""
    from snapledger.adapters.libvirt.xml_input import snapshot_request

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
@click.option("--running", is_flag=True, help="Start the libvirt domain again afterwards.")
@dry_run_option
@after_command_options
@pass_context
def revert(
    c: Context, vm: str, name: str, overlays: tuple[str, ...], xml_path: str | None, running: bool, dry_run: bool
) -> None:
    """Revert to a snapshot on new overlays; the abandoned present goes if nothing needs it."""
    from snapledger.adapters.libvirt.xml_input import revert_overlays

    if overlays and xml_path:
        raise BadInput("give either --overlay or --xml, not both")
    chosen = revert_overlays(read_file(xml_path, "revert XML")) if xml_path else pairs(overlays, "--overlay")
    plan = c.ledger.revert(vm, name, chosen, dry_run=dry_run, running=running)
    report(c, plan, dry_run, f"revert to {name}")


@cli.command("swap-disk")
@click.argument("vm")
@click.argument("disk")
@click.argument("path")
@after_command_options
@pass_context
def swap_disk(c: Context, vm: str, disk: str, path: str) -> None:
    """Record that the user put another image in place."""
    c.ledger.swap_disk(vm, disk, path)
    data = vm_document(c.ledger.view, vm)
    output.emit_json(data) if c.as_json else output.show_vm(data)


@cli.command()
@click.argument("vm")
@click.argument("name")
@click.option("--strategy", type=click.Choice(["auto", "commit", "pull"]), default="auto")
@click.option("--branches", type=click.Choice(["forbid", "pull", "keep"]), default="forbid")
@dry_run_option
@after_command_options
@pass_context
def delete(c: Context, vm: str, name: str, strategy: str, branches: str, dry_run: bool) -> None:
    """Delete a snapshot by the cheapest safe merge."""
    plan = c.ledger.delete(vm, name, strategy, branches, dry_run=dry_run)
    report(c, plan, dry_run, f"delete {name}")


@cli.command()
@click.argument("vm", required=False)
@click.option("--include-detached", is_flag=True)
@dry_run_option
@after_command_options
@pass_context
def gc(c: Context, vm: str | None, include_detached: bool, dry_run: bool) -> None:
    """Delete managed images nothing needs."""
    plans = [plan_document(plan, not dry_run) for plan in c.ledger.gc(vm, include_detached, dry_run)]
    if c.as_json:
        output.emit_json(plans)
        return
    if not plans:
        output.say("nothing to collect")
    for plan in plans:
        output.show_plan(plan, "gc")


@cli.command()
@click.argument("vm", required=False)
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
        output.emit_json(recover_document(finished))
    else:
        output.say("\n".join(finished) if finished else "nothing to recover")


@cli.command()
@click.argument("vm", required=False)
@click.option("--head", "show_head", is_flag=True, help="Print the chain's head hash to keep elsewhere.")
@click.option("--expect-head", metavar="HASH", help="A head kept earlier: also catches a truncated tail.")
@after_command_options
@pass_context
def verify(c: Context, vm: str | None, show_head: bool, expect_head: str | None) -> None:
    """Check the event hash chain and the ledger against the disks; exit 3 on any finding."""
    if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
        raise BadInput("--expect-head takes the 64 hex digits `verify --head` printed")
    from snapledger.domain.ledger_hash import BEFORE_CHAIN

    app = c.ledger_app
    app.check_file()  # damage in pages no command read yet: exit 1, as the store's trouble
    checked = app.check_chain(expect_head)
    notes = [str(f) for f in checked if f.kind == BEFORE_CHAIN]
    chain = [str(f) for f in checked if f.kind != BEFORE_CHAIN]
    position, head_hash = app.head()
    from snapledger.adapters.eventstore.trail_index import trail_index_for

    index = trail_index_for(app) if not chain else None
    if index is not None:  # a cache must agree with the events just checked
        from snapledger.projections.trail import trail

        wrong = index.disagreements(trail(app.events_after(0)))
        if wrong:
            chain.append(f"the trail index (a cache) disagreed with the events at {len(wrong)} "
                         f"position(s) from {wrong[0]}; it was dropped and will be rebuilt")
    try:
        disks = c.ledger.verify(vm)
    except LedgerDamaged as damaged:
        disks = [f"the disks were not checked: {damaged}"]
    data = verify_document(chain, disks, notes, position, head_hash)
    if c.as_json:
        output.emit_json(data)
    else:
        if show_head:
            output.say(f"head {position} {head_hash}")
        for note in notes:
            output.say(f"note: {note}")
        findings = data["findings"]
        output.say("\n".join(findings) if findings else "ok: the hash chain is intact and the disks agree with the ledger")
    if chain:
        raise TamperFound(f"verify: {len(chain)} hash chain finding(s); the ledger was changed outside snapledger")
    if disks:
        raise DriftReported(f"verify: {len(disks)} finding(s); the ledger and the disks disagree")


@cli.command()
@click.argument("vm")
@click.option("--dry-run", is_flag=True, help="Show what would be recorded; record nothing.")
@after_command_options
@pass_context
def reconcile(c: Context, vm: str, dry_run: bool) -> None:
    """Record the disks' reality after drift (new identities, backings, files found or gone),
    writing and deleting no image."""
    found = c.ledger.reconcile(vm, dry_run=dry_run)
    position = c.ledger.last_position()
    if c.as_json:
        output.emit_json(reconcile_document(vm, dry_run, found, position))
        return
    if not found.changes:
        output.say(f"{vm}: the disks agree with the ledger; nothing to record")
        return
    for line in found.changes:
        output.say(line)
    output.say("dry run, nothing recorded" if dry_run else f"recorded at position {position}")


@cli.command()
@click.argument("vm")
@after_command_options
@pass_context
def retire(c: Context, vm: str) -> None:
    """End tracking of a VM: its history stays, its images are let go, nothing is deleted."""
    left_behind = c.ledger.retire(vm)
    if c.as_json:
        output.emit_json(retire_document(vm, left_behind, c.ledger.last_position()))
        return
    output.say(f"{vm} is retired: no longer tracked; its history stays (snapledger log {vm})")
    for path in left_behind:
        output.say(f"left on disk (made by snapledger): {path}")


@cli.command("list")
@after_command_options
@pass_context
def list_vms(c: Context) -> None:
    """The VMs in the ledger."""
    rows = vm_rows(c.ledger.refresh())
    if c.as_json:
        output.emit_json(rows)
    else:
        output.show_rows(
            "VMs", ["vm", "current", "snapshots", "unfinished"],
            [[r["vm"], r["current"], r["snapshots"], r["operation"]] for r in rows],
        )


@cli.command()
@click.argument("vm")
@click.option("--at-event", type=int, metavar="N", help="The state right after ledger position N (log --json).")
@click.option("--at", "at_time", metavar="TIME", help="The state at TIME (ISO 8601; naive is UTC).")
@after_command_options
@pass_context
def show(c: Context, vm: str, at_event: int | None, at_time: str | None) -> None:
    """A VM's state now, or in the past."""
    if at_event is None and at_time is None:
        text = c.stored_show_text(vm)  # the fast path: no folding, no eventsourcing
        if text is not None:
            if c.as_json:
                sys.stdout.write(text + "\n")
            else:
                import json

                output.show_vm(json.loads(text))
            return
        c.ledger.vm(vm)  # unknown VM: a clear error
        view = c.ledger.refresh()
    else:
        from snapledger.adapters.service.queries import past_view

        view = past_view(c.ledger, vm, at_event, at_time)
    data = vm_document(view, vm)
    output.emit_json(data) if c.as_json else output.show_vm(data)


@cli.command()
@click.argument("vm")
@click.argument("start", metavar="N", type=int)
@click.argument("end", metavar="M", type=int)
@after_command_options
@pass_context
def diff(c: Context, vm: str, start: int, end: int) -> None:
    """What changed for a VM from ledger position N to M (0: the empty ledger)."""
    from snapledger.adapters.service.queries import diff as diff_positions

    data = diff_positions(c.ledger, vm, start, end)
    output.emit_json(data) if c.as_json else output.show_diff(data)


@cli.command()
@click.argument("vm")
@click.option("--images", is_flag=True, help="Draw the image DAG instead.")
@after_command_options
@pass_context
def tree(c: Context, vm: str, images: bool) -> None:
    """The snapshot tree (current marked); with --images the image DAG."""
    from snapledger.projections.pictures import image_picture
    from snapledger.projections.tree import snapshot_tree

    view = c.ledger.refresh()
    if images:
        data = image_dag_document(image_picture(view, vm), vm)
        output.emit_json(data) if c.as_json else output.show_image_dag(data)
    else:
        data = tree_document(snapshot_tree(view, vm))
        output.emit_json(data) if c.as_json else output.show_tree(data)


@cli.command()
@click.argument("vm", required=False)
@click.option("--since", metavar="TIME", help="Only events recorded at or after TIME (ISO 8601).")
@click.option("--until", metavar="TIME", help="Only events recorded at or before TIME.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only events of TYPE (e.g. SnapshotTaken).")
@after_command_options
@pass_context
def log(c: Context, vm: str | None, since: str | None, until: str | None, types: tuple[str, ...]) -> None:
    """The audit trail: who did what, where, when and why."""
    from snapledger.projections.history import parse_time
    from snapledger.projections.trail import EVENT_TYPES, select, trail

    app = c.ledger_app
    if vm is not None and not app.has_vm(vm):
        raise UnknownVm(f"no VM named {vm!r} in the ledger")
    unknown = [t for t in types if t not in EVENT_TYPES and t.rpartition(".")[2] not in EVENT_TYPES]
    if unknown:
        raise BadInput(f"unknown event type {unknown[0]!r}; one of: {', '.join(sorted(EVENT_TYPES))}")
    low = parse_time(since) if since else None
    high = parse_time(until) if until else None
    from snapledger.adapters.eventstore.trail_index import trail_index_for

    index = trail_index_for(app)
    if index is not None:
        entries = index.select(vm, low, high, types)
    else:
        chain = {record.position: record for record in app.chain()}
        entries = select(trail(app.events_after(0), chain), vm, low, high, types)
    if c.as_json:
        output.emit_json_list([e.to_json() for e in entries])
    else:
        output.show_rows(
            "audit trail", ["#", "time", "vm", "event", "actor", "host", "reason", "summary"],
            [
                [e.position, e.time, e.vm or e.image, e.type,
                 e.recorded_by.actor if e.recorded_by else "?",
                 e.recorded_by.host if e.recorded_by else "?",
                 (e.recorded_by.reason if e.recorded_by else None) or "", e.summary]
                for e in entries
            ],
        )



@cli.command()
@click.argument("vm")
@click.argument("path")
@after_command_options
@pass_context
def explain(c: Context, vm: str, path: str) -> None:
    """Why an image is kept, what may be done with it, and which deletions would free it."""
    import os.path

    from snapledger.projections.explain import explain_image

    dependants = c.ledger.unknown_dependants(vm)
    view = c.ledger.refresh()
    data = explain_image(view, vm, os.path.abspath(path), c.ledger.cost, dependants).to_json()
    output.emit_json(data) if c.as_json else output.show_explain(data)


EXPORT_FORMATS = ("jsonl", "dot")


@cli.command()
@click.argument("vm", required=False)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="jsonl", show_default=True,
              help="dot: the image DAG for Graphviz (dot -Tsvg); jsonl: the events.")
@pass_context
def export(c: Context, vm: str | None, fmt: str) -> None:
    """Take the history elsewhere (one VM, or the whole ledger), written to stdout."""
    if fmt == "jsonl":
        from snapledger.adapters.eventstore.export import export_jsonl

        if vm is not None and not c.ledger_app.has_vm(vm):
            raise UnknownVm(f"no VM named {vm!r} in the ledger")
        export_jsonl(c.ledger_app, vm, sys.stdout)
        return
    from snapledger.projections.pictures import image_dag_dot

    output.emit_text(image_dag_dot(c.ledger.refresh(), vm))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--until N] COMMAND...")
@pass_context
def replay(c: Context, file: str, command: tuple[str, ...]) -> None:
    """Load an export into a throwaway store (its hash chain checked) and run a read-only
    command on it: show, tree, log, explain, diff, list, export, or delete/revert/gc --dry-run.
    `--until N` (before the command) replays only the events up to ledger position N."""
    from snapledger.adapters.compose import ledger_service
    from snapledger.adapters.eventstore.export import (
        RecordedFactsStorage,
        read_export,
        replay_store,
    )

    until, command = replay_command(command)
    try:
        with open(file, encoding="utf-8") as handle:
            history = read_export(handle, file)
    except OSError as error:
        raise BadInput(f"can't read {file}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{file} is not a snapledger export (not UTF-8 text)") from None
    storage = RecordedFactsStorage()
    app = replay_store(history, until)
    replayed = Context.given(app, ledger_service(app, storage), c.as_json)
    storage.view = replayed.ledger.view
    cli.main(args=list(command), obj=replayed, prog_name="snapledger replay", standalone_mode=False)


def report(c: Context, plan: Any, dry_run: bool, title: str) -> None:
    document = plan_document(plan, not dry_run)
    output.emit_json(document) if c.as_json else output.show_plan(document, title)


def main(argv: list[str] | None = None) -> int:
    session = Context()
    try:
        cli.main(args=argv, prog_name="snapledger", standalone_mode=False, obj=session)
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
    except Exception as error:  # the last resort: never a traceback (unless asked for)
        return unexpected(error, session.store_label())
    return 0


def unexpected(error: Exception, store: str | None) -> int:
    """One line for a failure nothing above foresaw: the store's own errors named as such
    (adapters/eventstore/failures.py), anything else as `unexpected failure (Type: message)`; exit 1.
    SNAPLEDGER_DEBUG=1 shows the traceback too."""
    if os.environ.get("SNAPLEDGER_DEBUG", "") not in ("", "0"):
        import traceback

        traceback.print_exception(error)
    from snapledger.adapters.eventstore.failures import describe

    message = describe(error, store)
    try:
        output.error(message)
    except Exception:  # rich itself broken: plain text, still one line
        sys.stderr.write(f"snapledger: error: {message!r}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
