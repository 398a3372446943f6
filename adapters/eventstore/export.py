"""Taking a history elsewhere: `export --format jsonl` and `replay FILE`.

The export is the trail with everything replay needs: each stored event's exact bytes (`state`,
UTF-8 JSON as eventsourcing wrote it), its chain record (who/where/why, digest, previous hash,
hash), and a readable summary. The first line is a header naming the ledger's head.

Replay verifies the file's hash chain, loads the events with their original positions and chain
records into a throwaway in-memory SQLite store, and runs read-only commands against it. The
storage it is given answers from the facts the ledger recorded and refuses every change, so a
production host's history can be inspected and its plans reproduced anywhere.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.chain import CHAIN_TABLE
from snapledger.adapters.service.ports import Dependants, Sharing
from snapledger.domain.errors import BadInput, TamperFound
from snapledger.domain.images import ImageFacts
from snapledger.domain.ledger_hash import (
    ChainFinding,
    ChainRecord,
    StoredEventRow,
    check_chain,
)
from snapledger.projections.trail import trail
from snapledger.projections.view import LedgerView

FORMAT = "snapledger-export"
FORMAT_VERSION = 1


def export_jsonl(app: LedgerApplication, vm: str | None, out: IO[str]) -> int:
    """Write the trail of `vm` (or the whole ledger) as JSON lines; return the events written."""
    position, head_hash = app.head()
    out.write(json.dumps({
        "format": FORMAT, "version": FORMAT_VERSION, "vm": vm,
        "head": {"position": position, "hash": head_hash},
    }) + "\n")
    rows = {row.position: row for row in app.stored_rows()}
    chain = {record.position: record for record in app.chain()}
    written = 0
    for entry in trail(app.events_after(0), chain):
        if vm is not None and entry.vm != vm:
            continue
        row, record = rows[entry.position], chain.get(entry.position)
        line = entry.to_json()
        line.update(
            originator_id=row.originator_id,
            originator_version=row.originator_version,
            topic=row.topic,
            **_state_field(row.state),
            event_digest=record.event_digest if record else None,
            prev_hash=record.prev_hash if record else None,
        )
        out.write(json.dumps(line, sort_keys=True) + "\n")
        written += 1
    return written


def _state_field(state: bytes) -> dict[str, str]:
    try:
        return {"state": state.decode("utf-8")}
    except UnicodeDecodeError:  # not what eventsourcing writes, but keep the exact bytes
        return {"state_b64": base64.b64encode(state).decode()}


@dataclass(frozen=True)
class ExportedHistory:
    vm: str | None
    head_position: int
    head_hash: str
    rows: list[StoredEventRow]
    records: list[ChainRecord]

    def check(self) -> list[ChainFinding]:
        """The file's own chain. A whole-ledger export is checked link by link and against its
        header's head; a one-VM export holds every record's own hash, not the links between."""
        findings = check_chain(self.rows, self.records, linked=self.vm is None)
        last = self.records[-1] if self.records else None
        if self.vm is None and (last is None or last.hash != self.head_hash) and self.head_position:
            findings.append(ChainFinding(
                last.position if last else 0, "truncated",
                f"the file ends before its header's head (position {self.head_position})",
            ))
        return findings


def read_export(lines: Iterable[str], source: str) -> ExportedHistory:
    rows: list[StoredEventRow] = []
    records: list[ChainRecord] = []
    header: dict[str, Any] | None = None
    for number, text in enumerate(lines, start=1):
        try:
            if header is None:
                header = _header(text)
                int(header["head"]["position"]), str(header["head"]["hash"])
            elif text.strip():
                _read_event(json.loads(text), rows, records)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise BadInput(f"{source} (line {number}) is not a valid snapledger export: {error}") from None
    if header is None:
        raise BadInput(f"{source} is empty, not a snapledger export")
    return ExportedHistory(
        header.get("vm"), header["head"]["position"], header["head"]["hash"], rows, records
    )


def _header(text: str) -> dict[str, Any]:
    """The first line: an object naming the format, or a clear word on what the file is instead."""
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or "format" not in header:
        raise ValueError("its first line is not a snapledger export header (JSON lines, as "
                         "'snapledger export --format jsonl' writes; not one JSON document)")
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise ValueError("no snapledger export header (version 1)")
    return header


def _read_event(item: dict[str, Any], rows: list[StoredEventRow], records: list[ChainRecord]) -> None:
    state = item["state"].encode("utf-8") if "state" in item else base64.b64decode(item["state_b64"])
    rows.append(StoredEventRow(
        item["position"], item["originator_id"], item["originator_version"], item["topic"], state
    ))
    if item.get("hash") is not None:
        records.append(ChainRecord(
            item["position"], item["event_digest"], item["prev_hash"], item["hash"],
            item["actor"], item["host"], item["tool_version"], item["reason"], item.get("operation"),
        ))


def replay_store(history: ExportedHistory, until: int | None = None) -> LedgerApplication:
    """A throwaway in-memory store holding the history up to `until`; refuses a broken chain."""
    findings = history.check()
    if findings:
        raise TamperFound(f"the export's hash chain is broken: {findings[0]} ({len(findings)} finding(s))")
    if until is not None and not any(row.position <= until for row in history.rows):
        raise BadInput(f"--until {until} is before the first event of the export")
    last = history.rows[-1].position if history.rows else 0
    if until is not None and until > last:
        raise BadInput(f"--until {until} is past the export's last event (position {last})")
    app = LedgerApplication(
        "memory:",
        env={"PERSISTENCE_MODULE": "snapledger.adapters.eventstore.chain:ChainedSQLiteFactory", "SQLITE_DBNAME": ":memory:"},
    )
    keep = [row for row in history.rows if until is None or row.position <= until]
    kept = {row.position for row in keep}
    recorder: Any = app.recorder
    with recorder.datastore.transaction(commit=True) as c:
        c.executemany(
            f"INSERT INTO {recorder.events_table_name} "
            "(rowid, originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?, ?)",
            [(r.position, r.originator_id, r.originator_version, r.topic, r.state) for r in keep],
        )
        c.executemany(
            f"INSERT INTO {CHAIN_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [r.as_row() for r in history.records if r.position in kept],
        )
    app.read_only = True
    return app


class RecordedFactsStorage:
    """The storage port answered from what the ledger recorded, for replay: nothing on this
    host is opened, and every change is refused."""

    def __init__(self) -> None:
        self.view = LedgerView()  # set by the caller to the replayed ledger's view
        self._known: tuple[tuple[int, int], dict[str, ImageFacts]] | None = None

    def _facts(self) -> dict[str, ImageFacts]:
        """Every image's recorded facts, built once per state of the (read-only) view."""
        key = (id(self.view), self.view.version)
        if self._known is None or self._known[0] != key:
            known: dict[str, ImageFacts] = {}
            for vm in self.view.vms.values():
                for path, record in vm.images.items():
                    known[path] = record.facts
            self._known = (key, known)
        return self._known[1]

    def exists(self, path: str) -> bool:
        return path in self._facts()

    def resolve(self, path: str) -> str:
        return path

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        from snapledger.domain.errors import StorageError

        try:
            return self._facts()[path]
        except KeyError:
            raise StorageError(f"{path}: not in the replayed ledger") from None

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        chain = [self.inspect(path)]
        while chain[-1].backing is not None:
            chain.append(self.inspect(chain[-1].backing))
        return chain

    def sharing(self, path: str) -> Sharing:
        return Sharing(links=1, writer=None, reader=None)  # a replay has no world around it

    def scan(self, directories: Iterable[str]) -> Dependants:
        return NoDependants()

    def _refuse(self, *_: object, **__: object) -> None:
        raise BadInput("replay is read-only: use show, tree, log, explain, diff or --dry-run")

    create_overlay = commit = pull = rebase_unsafe = delete = repair = check_tools = _refuse

    def remove_unfinished(self, path: str) -> bool:
        self._refuse()
        return False

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        self._refuse()
        return False


class NoDependants:
    """A replayed ledger knows only its recorded facts: no file outside it."""

    def dependants(self, image: str, known: Collection[str]) -> list[str]:
        return []

    def dependants_of(self, images: Iterable[str], known: Collection[str]) -> Mapping[str, list[str]]:
        return {image: [] for image in images}
