"""The commands about the history itself: log (the audit trail), verify (the hash chain and the
disks), export, and replay (an export loaded into a throwaway store, a command run on it)."""

from __future__ import annotations

import re
import sys

import click

from snapledger.adapters.cli import output
from snapledger.adapters.cli.arguments import replay_command
from snapledger.adapters.cli.options import after_command_options, command, pass_context
from snapledger.adapters.cli.session import Context
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.export import (
    RecordedFactsStorage,
    export_jsonl,
    read_export,
    replay_store,
)
from snapledger.adapters.eventstore.trail_index import trail_index_for
from snapledger.domain.errors import BadInput, LedgerDamaged, Refused, TamperFound, UnknownVm
from snapledger.domain.ledger_hash import BEFORE_CHAIN
from snapledger.projections.documents import verify_document
from snapledger.projections.history import parse_time
from snapledger.projections.pictures import image_dag_dot
from snapledger.projections.trail import EVENT_TYPES, select, trail


class DriftReported(Refused):
    """verify found the ledger and the disks disagreeing (exit 3)."""


@command()
@click.argument("vm", required=False)
@click.option("--since", metavar="TIME", help="Only events recorded at or after TIME (ISO 8601).")
@click.option("--until", metavar="TIME", help="Only events recorded at or before TIME.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only events of TYPE (e.g. SnapshotTaken).")
@after_command_options
@pass_context
def log(c: Context, vm: str | None, since: str | None, until: str | None, types: tuple[str, ...]) -> None:
    """The audit trail: who did what, where, when and why."""
    app = c.ledger_app
    if vm is not None and not app.has_vm(vm):
        raise UnknownVm(f"no VM named {vm!r} in the ledger")
    unknown = [t for t in types if t not in EVENT_TYPES and t.rpartition(".")[2] not in EVENT_TYPES]
    if unknown:
        raise BadInput(f"unknown event type {unknown[0]!r}; one of: {', '.join(sorted(EVENT_TYPES))}")
    low = parse_time(since) if since else None
    high = parse_time(until) if until else None
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


@command()
@click.argument("vm", required=False)
@click.option("--head", "show_head", is_flag=True, help="Print the chain's head hash to keep elsewhere.")
@click.option("--expect-head", metavar="HASH", help="A head kept earlier: also catches a truncated tail.")
@after_command_options
@pass_context
def verify(c: Context, vm: str | None, show_head: bool, expect_head: str | None) -> None:
    """Check the event hash chain and the ledger against the disks; exit 3 on any finding."""
    if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
        raise BadInput("--expect-head takes the 64 hex digits `verify --head` printed")
    app = c.ledger_app
    app.check_file()  # damage in pages no command read yet: exit 1, as the store's trouble
    checked = app.check_chain(expect_head)
    notes = [str(f) for f in checked if f.kind == BEFORE_CHAIN]
    chain = [str(f) for f in checked if f.kind != BEFORE_CHAIN]
    position, head_hash = app.head()
    index = trail_index_for(app) if not chain else None
    if index is not None:  # a cache must agree with the events just checked
        wrong = index.disagreements(trail(app.events_after(0)))
        if wrong:
            chain.append(f"the trail index (a cache) disagreed with the events at {len(wrong)} "
                         f"position(s) from {wrong[0]}; it was dropped and will be rebuilt")
    from snapledger.adapters.checkpoint.audit import projection_findings  # verify's alone
    from snapledger.adapters.checkpoint.persisted import PersistedProjection

    projection = c.ledger.projection  # before anything loads the view from it
    if not chain and isinstance(projection, PersistedProjection):
        chain += projection_findings(projection)  # an edit that kept every checksum right
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
        raise TamperFound(
            f"verify: {len(chain)} finding(s) in the hash chain or the caches kept beside it; "
            "the ledger was changed outside snapledger"
        )
    if disks:
        raise DriftReported(f"verify: {len(disks)} finding(s); the ledger and the disks disagree")


EXPORT_FORMATS = ("jsonl", "dot")


@command()
@click.argument("vm", required=False)
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
