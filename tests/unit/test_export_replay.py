"""Export then replay gives identical projections, at the end and at every position."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.export import (
    RecordedFactsStorage,
    export_jsonl,
    read_export,
    replay_store,
)
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import SnapledgerError

operations = st.lists(
    st.tuples(st.sampled_from(["snapshot", "revert", "delete", "write"]), st.integers(0, 9)),
    max_size=14,
)


def history(ops: list[tuple[str, int]]) -> Snapledger:
    storage = SimulatedStorage()
    storage.make_image("/images/base.qcow2", 16 * CLUSTER, {0: 1})
    storage.make_image("/images/other.qcow2", 16 * CLUSTER, {1: 2})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": "/images/base.qcow2"})
    ledger.adopt("other", {"vda": "/images/other.qcow2"})
    taken = 0
    for op, n in ops:
        names = sorted(ledger.vm("vm").snapshots)
        try:
            if op == "snapshot":
                taken += 1
                ledger.snapshot("vm", f"s{taken}")
            elif op == "write":
                storage.write(ledger.vm("vm").disks["vda"], n, 0x40 + n)
            elif names and op == "revert":
                ledger.revert("vm", names[n % len(names)])
            elif names and op == "delete":
                ledger.delete("vm", names[n % len(names)], "auto", "pull")
        except SnapledgerError:
            pass  # refusals are part of a history too
    return ledger


def replayed(ledger: Snapledger, vm: str | None = None, until: int | None = None) -> Snapledger:
    out = io.StringIO()
    export_jsonl(ledger.app, vm, out)
    app = replay_store(read_export(out.getvalue().splitlines(), "export"), until)
    storage = RecordedFactsStorage()
    copy = ledger_service(app, storage)
    storage.view = copy.view
    return copy


@settings(max_examples=40)
@given(operations)
def test_replay_rebuilds_the_same_ledger(ops: list[tuple[str, int]]) -> None:
    # Ending on a snapshot records what the guest wrote last: replay plans from recorded facts.
    ledger = history([*ops, ("snapshot", 0)])
    copy = replayed(ledger)
    assert copy.view.canonical() == ledger.refresh().canonical()
    assert copy.app.check_chain() == [] and copy.app.head() == ledger.app.head()
    for name in ledger.vm("vm").snapshots:  # plans are reproduced without the host's disks
        live = ledger.delete("vm", name, "auto", "pull", dry_run=True)
        assert copy.delete("vm", name, "auto", "pull", dry_run=True) == live


@settings(max_examples=15)
@given(operations, st.data())
def test_replay_until_a_position_is_the_ledger_at_that_position(
    ops: list[tuple[str, int]], data: st.DataObject
) -> None:
    ledger = history(ops)
    last = ledger.app.head()[0]
    until = data.draw(st.integers(1, last))
    assert replayed(ledger, until=until).view.canonical() == ledger.view_at(until).canonical()


@settings(max_examples=15)
@given(operations)
def test_a_one_vm_export_replays_that_vm(ops: list[tuple[str, int]]) -> None:
    ledger = history(ops)
    copy = replayed(ledger, vm="vm")
    assert set(copy.view.vms) == {"vm"}
    assert copy.view.canonical()["vms"]["vm"] == ledger.refresh().canonical()["vms"]["vm"]
