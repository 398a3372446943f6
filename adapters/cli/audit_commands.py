"""The commands about the history itself: log (the audit trail), verify (the hash chain and the
disks), export, and replay (an export loaded into a throwaway store, a command run on it)."""

from __future__ import annotations

import sys

import click

from snapledger.adapters.audit import log_entries, verify_ledger
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
@click.option("--since", metavar="TIME", help="Only events recorded at or after TIME (ISO 8601).")
@click.option("--until", metavar="TIME", help="Only events recorded at or before TIME.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only events of TYPE (e.g. SnapshotTaken).")
@after_command_options
@pass_context
def log(c: Context, vm: str | None, since: str | None, until: str | None, types: tuple[str, ...]) -> None:
    """The audit trail: who did what, where, when and why."""
    entries = log_entries(c.ledger_app, vm, since, until, types)
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
