"""The commands about the history itself: log (the audit trail), verify (the hash chain and the
disks), export, and replay (an export loaded into a throwaway store, a command run on it)."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import TypeVar

import click
from click.core import ParameterSource

from snapledger.adapters.cli import output
from snapledger.adapters.cli.arguments import replay_command
from snapledger.adapters.cli.options import after_command_options, command, pass_context
from snapledger.adapters.cli.session import Context
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
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
from snapledger.projections.history import parse_when
from snapledger.projections.operations import KINDS, chosen, operations
from snapledger.projections.pictures import image_dag_dot
from snapledger.projections.trail import EVENT_TYPES, TrailEntry, select, trail

T = TypeVar("T")


class DriftReported(Refused):
    """verify found the ledger and the disks disagreeing (exit 3)."""


@command()
@click.argument("vm", required=False)
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
    if ParameterSource.COMMANDLINE in (ctx.get_parameter_source("actor"), ctx.find_root().get_parameter_source("actor")):
        raise BadInput("log records nothing, so --actor (who acts) means nothing here; to see what someone did: log --by NAME")
    if mode is None:  # people read operations; scripts' --json keeps the event list (cli.md)
        mode = "events" if c.as_json or (types and all(_is_event_type(t) for t in types)) else "operations"
    if mode == "operations":
        unknown = [t for t in types if t not in KINDS]
        if unknown:
            raise BadInput(f"unknown operation kind {unknown[0]!r}; one of: {', '.join(sorted(KINDS))} (event types go with --events)")
    else:
        unknown = [t for t in types if not _is_event_type(t)]
        if unknown:
            raise BadInput(f"unknown event type {unknown[0]!r}; one of: {', '.join(sorted(EVENT_TYPES))}")
    now = datetime.now().astimezone()
    low = parse_when(since, now) if since else None
    high = parse_when(until, now) if until else None
    app = c.ledger_app
    if vm is not None and not app.has_vm(vm):
        raise UnknownVm(f"no VM named {vm!r} in the ledger")
    index = trail_index_for(app)
    if mode == "events":
        if index is not None:
            entries = index.select(vm, low, high, types)
        else:
            entries = select(_whole_trail(app), vm, low, high, types)
        if by is not None:
            entries = [e for e in entries if e.recorded_by and by in (e.recorded_by.actor, f"{e.recorded_by.actor}@{e.recorded_by.host}")]
        entries = _last(entries, count, reverse)
        if c.as_json:
            output.emit_json_list([e.to_json() for e in entries])
        else:
            output.show_events([e.to_json() for e in entries], paged=not no_pager)
        return
    whole = index.select() if index is not None else _whole_trail(app)
    found = _last(chosen(operations(whole), vm, low, high, types, by), count, reverse)
    if c.as_json:
        output.emit_json_list([op.to_json() for op in found])
    else:
        output.show_operations([op.to_json() for op in found], paged=not no_pager)


def _is_event_type(name: str) -> bool:
    return name in EVENT_TYPES or name.rpartition(".")[2] in EVENT_TYPES


def _whole_trail(app: LedgerApplication) -> list[TrailEntry]:
    chain = {record.position: record for record in app.chain()}
    return trail(app.events_after(0), chain)


def _last(items: list[T], count: int | None, reverse: bool) -> list[T]:
    """The last `count` (all: None), oldest first, or newest first with `reverse`."""
    kept = items[-count:] if count is not None else items
    return kept[::-1] if reverse else kept


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
