"""The hash chain's checker on plain rows: every kind of tampering is named at its position."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace

from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from snapledger.adapters.eventstore.chain import chain_hash_tail, chain_hash_text, event_digests
from snapledger.domain.ledger_hash import (
    BEFORE_CHAIN,
    ChainRecord,
    RecordedBy,
    StoredEventRow,
    chain_hash,
    chain_records,
    check_chain,
    head,
)

BY = RecordedBy("alice", "host1", "1.0", None)


def ledger(n: int) -> tuple[list[StoredEventRow], list[ChainRecord]]:
    rows = [
        StoredEventRow(p, f"{p % 3:032x}", p, "snapledger.domain.vm:VirtualMachine.SnapshotTaken", f'{{"n":{p}}}'.encode())
        for p in range(1, n + 1)
    ]
    records: list[ChainRecord] = []
    for row in rows:  # saved one at a time, each continuing from the last record
        records += chain_records(head(records)[1], [row], BY)
    return rows, records


sizes = st.integers(min_value=3, max_value=30)


@given(sizes)
def test_an_untouched_chain_is_clean_and_heads_agree(n: int) -> None:
    rows, records = ledger(n)
    assert check_chain(rows, records) == []
    assert check_chain(rows, records, expect_head=records[-1].hash) == []
    assert check_chain(rows, records, expect_head=records[0].hash) == []  # the ledger grew since
    one_go = chain_records(head([])[1], rows, BY)  # one save of many events gives the same chain
    assert one_go == records


@given(sizes, st.data())
def test_an_edited_event_is_named(n: int, data: st.DataObject) -> None:
    rows, records = ledger(n)
    i = data.draw(st.integers(0, n - 1))
    rows[i] = replace(rows[i], state=rows[i].state + b" ")
    assert [(f.position, f.kind) for f in check_chain(rows, records)] == [(i + 1, "edited")]


@given(sizes, st.data())
def test_a_deleted_event_is_named(n: int, data: st.DataObject) -> None:
    rows, records = ledger(n)
    i = data.draw(st.integers(0, n - 1))
    del rows[i]
    assert [(f.position, f.kind) for f in check_chain(rows, records)] == [(i + 1, "deleted")]
    del records[i]  # and its record: the chain breaks at the next one (if any)
    expected = [(i + 2, "broken")] if i < n - 1 else []
    assert [(f.position, f.kind) for f in check_chain(rows, records)] == expected


@given(sizes)
def test_an_inserted_event_is_named(n: int) -> None:
    rows, records = ledger(n)
    rows.append(replace(rows[0], position=n + 1, originator_version=999))
    assert [(f.position, f.kind) for f in check_chain(rows, records)] == [(n + 1, "inserted")]


@given(sizes, st.data())
def test_reordered_events_are_named(n: int, data: st.DataObject) -> None:
    rows, records = ledger(n)
    i, j = sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True)))
    a, b = rows[i], rows[j]
    rows[i] = replace(b, position=a.position)
    rows[j] = replace(a, position=b.position)
    assert [(f.position, f.kind) for f in check_chain(rows, records)] == [
        (i + 1, "reordered"), (j + 1, "reordered")
    ]


@given(sizes, st.data())
def test_an_edited_record_is_named(n: int, data: st.DataObject) -> None:
    rows, records = ledger(n)
    i = data.draw(st.integers(0, n - 1))
    records[i] = replace(records[i], actor="mallory")
    assert [(f.position, f.kind) for f in check_chain(rows, records)] == [(i + 1, "record-edited")]


@given(sizes, st.data())
def test_a_rewritten_tail_is_caught_only_by_a_kept_head(n: int, data: st.DataObject) -> None:
    rows, records = ledger(n)
    kept = records[-1].hash
    cut = data.draw(st.integers(1, n - 1))
    rows, records = rows[:cut], records[:cut]
    assert check_chain(rows, records) == []
    assert [f.kind for f in check_chain(rows, records, expect_head=kept)] == ["truncated"]


@given(sizes, st.data())
def test_events_older_than_the_chain_are_a_note_not_tampering(n: int, data: st.DataObject) -> None:
    rows, _ = ledger(n)
    start = data.draw(st.integers(1, n))  # the first event recorded by a snapledger with the chain
    records = chain_records(head([])[1], rows[start - 1 :], BY)
    found = check_chain(rows, records)
    older = [(f.position, f.kind) for f in found]
    assert older == ([(start - 1, BEFORE_CHAIN)] if start > 1 else [])
    assert check_chain([], []) == [] and [f.kind for f in check_chain(rows, [])] == [BEFORE_CHAIN]
    # Records deleted from the start are not "older": the first one left no longer starts
    # from GENESIS, so the chain is broken there.
    if start == 1 and n > 2:
        kinds = {f.kind for f in check_chain(rows, records[2:])}
        assert "broken" in kinds and BEFORE_CHAIN not in kinds


# The PostgreSQL save (adapters/eventstore/chain_postgres.py) has the server hash a text put
# together from parts; here the parts are shown to make chain_hash's text for any who/where/why.
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


@given(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.integers(min_value=1, max_value=2**62),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.builds(RecordedBy, texts, texts, texts, st.none() | texts),
)
def test_the_parts_the_postgres_save_hashes_make_chain_hashs_text(
    prev: str, position: int, digest: str, by: RecordedBy
) -> None:
    tail = chain_hash_tail(by)
    assert tail.isascii()  # its bytes are the same in any database encoding
    text = chain_hash_text(prev, position, digest, tail)
    assert hashlib.sha256(text.encode()).hexdigest() == chain_hash(prev, position, digest, by)


@given(sizes)
def test_digests_computed_before_the_positions_are_known_are_the_rows_digests(n: int) -> None:
    rows, records = ledger(n)
    stored = [
        StoredEvent(uuid.UUID(r.originator_id), r.originator_version, r.topic, r.state) for r in rows
    ]
    assert event_digests(stored) == [r.event_digest for r in records]


def test_a_record_without_an_operation_hashes_as_records_made_before_operations_did() -> None:
    """Older ledgers stay verifiable: only a record with an operation hashes one."""
    digest = "d" * 64
    old_text = '["' + "0" * 64 + '",7,"' + digest + '","alice","host1","1.0",null]'
    assert chain_hash("0" * 64, 7, digest, BY) == hashlib.sha256(old_text.encode()).hexdigest()
    with_op = replace(BY, operation="f" * 32)
    assert chain_hash("0" * 64, 7, digest, with_op) != chain_hash("0" * 64, 7, digest, BY)
    rows, records = ledger(4)
    stripped = [replace(r, operation=None) for r in chain_records("0" * 64, rows, with_op)]
    assert check_chain(rows, stripped)  # dropping a record's operation is tampering


@given(st.text(max_size=40))
def test_the_postgres_tail_hashes_an_operation_like_chain_hash(operation: str) -> None:
    by = replace(BY, operation=operation)
    text = chain_hash_text("0" * 64, 3, "e" * 64, chain_hash_tail(by))
    assert hashlib.sha256(text.encode()).hexdigest() == chain_hash("0" * 64, 3, "e" * 64, by)
