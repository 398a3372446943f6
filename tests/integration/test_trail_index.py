"""The SQLite trail index answers as the events do: log entries and times to positions."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.trail_index import TrailIndex, trail_index_for
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.projections.history import event_time
from snapledger.projections.trail import trail


def history(tmp_path: Path) -> Snapledger:
    storage = SimulatedStorage()
    storage.make_image("/images/base.qcow2", 16 * CLUSTER, {0: 1})
    ledger = ledger_service(LedgerApplication(f"sqlite:///{tmp_path}/l.sqlite"), storage)
    ledger.adopt("vm", {"vda": "/images/base.qcow2"})
    for name in ("s1", "s2", "s3"):
        ledger.snapshot("vm", name)
    ledger.revert("vm", "s1")
    ledger.delete("vm", "s2", "auto", "pull")
    return ledger


def test_the_index_is_the_trail_and_grows_by_polling(tmp_path: Path) -> None:
    ledger = history(tmp_path)
    index = trail_index_for(ledger.app)
    assert isinstance(index, TrailIndex)
    chain = {r.position: r for r in ledger.app.chain()}
    assert index.select() == trail(ledger.app.events_after(0), chain)
    ledger.snapshot("vm", "later")  # recorded after the index was built
    chain = {r.position: r for r in ledger.app.chain()}
    assert index.select() == trail(ledger.app.events_after(0), chain)
    assert trail_index_for(LedgerApplication("memory:")) is None


def test_times_map_to_the_positions_the_events_give(tmp_path: Path) -> None:
    ledger = history(tmp_path)
    index = trail_index_for(ledger.app)
    assert index is not None
    times = [event_time(event) for event, _ in ledger.app.events_after(0)]
    probes = [times[0] - timedelta(seconds=1), *times, *(t + timedelta(microseconds=1) for t in times)]
    for when in probes:
        assert index.position_at(when) == ledger.position_at(when), when
