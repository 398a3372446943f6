"""The commands about the history itself: log (the audit trail), verify (the hash chain and the
disks), export, and replay (an export loaded into a throwaway store, a command run on it)."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from snapledger.adapters.audit import is_event_type, log_entries, log_operations, verify_ledger
from snapledger.adapters.cli import output
from snapledger.adapters.cli.arguments import replay_command
from snapledger.adapters.cli.options import (
    after_command_options,
    command,
    pass_context,
    vm_argument,
)
from snapledger.adapters.cli.session import Context
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.export import (
    RecordedFactsStorage,
    export_jsonl,
    read_export,
    replay_store,
)
from snapledger.domain.errors import BadInput, Refused, TamperFound, UnknownVm
from snapledger.projections.pictures import image_dag_dot


class DriftReported(Refused):
    """verify found the ledger and the disks disagreeing (exit 3)."""


@command()
@vm_argument(required=False)
@click.option("--since", metavar="TIME", help="Only what began at or after TIME: ISO 8601, today, yesterday, or a span back from now (2h, 7d).")
@click.option("--until", metavar="TIME", help="Only what began at or before TIME (as --since).")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only operations of kind TYPE (delete, snapshot, ...); with --events, events of TYPE (SnapshotTaken).")
@click.option("--by", "by", metavar="WHO", help="Only what WHO did: an actor, or actor@host.")
@click.option("--operations", "mode", flag_value="operations", help="One entry per operation (people's default).")
@click.option("--events", "mode", flag_value="events", help="Every event (--json's default).")
@click.option("-n", "--max-count", "count", type=click.IntRange(1), metavar="N", help="Only the last N.")
@click.option("--reverse", is_flag=True, help="Newest first.")
@click.option("--no-pager", is_flag=True, help="Never page, even on a terminal.")
@after_command_options
@pass_context
def log(
    c: Context, vm: str | None, since: str | None, until: str | None, types: tuple[str, ...],
    by: str | None, mode: str | None, count: int | None, reverse: bool, no_pager: bool,
) -> None:
    """The audit trail: who did what, where, when and why; one line per operation."""
    ctx = click.get_current_context()
    said = {name for name in ("actor", "reason") if ParameterSource.COMMANDLINE in (
        ctx.get_parameter_source(name), ctx.find_root().get_parameter_source(name))}
    if "actor" in said:
        raise BadInput("log records nothing, so --actor (who acts) means nothing here; to see what someone did: log --by NAME")
    if "reason" in said:
        raise BadInput("log records nothing, so --reason (why) means nothing here")
    if ctx.get_parameter_source("mode") == ParameterSource.COMMANDLINE and {"--operations", "--events"} <= set(sys.argv):
        raise BadInput("give --operations or --events, not both")
    if mode is None:  # people read operations; scripts' --json keeps the event list (cli.md)
        mode = "events" if c.as_json or (types and all(is_event_type(t) for t in types)) else "operations"
    if mode == "events":
        entries = log_entries(c.ledger_app, vm, since, until, types, by, count, reverse)
        if c.as_json:
            output.emit_json_list([e.to_json() for e in entries])
        else:
            output.show_events([e.to_json() for e in entries], paged=not no_pager)
        return
    found = log_operations(c.ledger_app, vm, since, until, types, by, count, reverse)
    if c.as_json:
        output.emit_json_list([op.to_json() for op in found])
    else:
        output.show_operations([op.to_json() for op in found], paged=not no_pager)


@command()
@vm_argument(required=False)
@click.option("--head", "show_head", is_flag=True, help="Print the chain's head hash to keep elsewhere.")
@click.option("--expect-head", metavar="HASH", help="A head kept earlier: also catches a truncated tail.")
@after_command_options
@pass_context
def verify(c: Context, vm: str | None, show_head: bool, expect_head: str | None) -> None:
    """Check the event hash chain and the ledger against the disks; exit 3 on any finding."""
    found = verify_ledger(c.ledger_app, lambda: c.ledger, vm, expect_head)
    chain, disks, notes = found.chain, found.disks, found.notes
    position, head_hash = found.position, found.head_hash
    data = found.document()
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
        raise TamperFound(
            f"verify: {len(chain)} finding(s) in the hash chain or the caches kept beside it; "
            "the ledger was changed outside snapledger"
        )
    if disks:
        raise DriftReported(f"verify: {len(disks)} finding(s); the ledger and the disks disagree")


EXPORT_FORMATS = ("jsonl", "dot")


@command()
@vm_argument(required=False)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="jsonl", show_default=True,
              help="dot: the image DAG for Graphviz (dot -Tsvg); jsonl: the events.")
@pass_context
def export(c: Context, vm: str | None, fmt: str) -> None:
    """Take the history elsewhere (one VM, or the whole ledger), written to stdout."""
    if fmt == "jsonl":
        if vm is not None and not c.ledger_app.has_vm(vm):
            raise UnknownVm(f"no VM named {vm!r} in the ledger")
        export_jsonl(c.ledger_app, vm, sys.stdout)
        return
    output.emit_text(image_dag_dot(c.ledger.refresh(), vm))


@command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--until N] COMMAND...")
@pass_context
def replay(c: Context, file: str, command: tuple[str, ...]) -> None:
    """Load an export into a throwaway store (its hash chain checked) and run a read-only
    command on it: show, tree, log, explain, diff, list, export, or delete/revert/gc --dry-run.
    `--until N` (before the command) replays only the events up to ledger position N."""
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
    replayed = Context.given(app, ledger_service(app, storage, every_host=True), c.as_json)
    storage.view = replayed.ledger.view
    group = click.get_current_context().find_root().command  # the whole command line, run again
    group.main(args=list(command), obj=replayed, prog_name="snapledger replay", standalone_mode=False)


AUDIT_COMMANDS = (log, verify, export, replay)
