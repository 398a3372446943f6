"""recover after a merge cut short, on simulated storage that leaves the worst QEMU leaves."""

from __future__ import annotations

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage

DISK = "/vms/a/vda.qcow2"
SIZE = 8 * CLUSTER


def test_a_pull_killed_after_its_header_was_written_is_done_again() -> None:
    """The crash leaves the pulled image's header naming the new backing with half its data:
    recover puts it back over the old backing (still there) and pulls again."""
    storage = SimulatedStorage()
    storage.make_image(DISK, SIZE, {0: 0x10})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": DISK})
    ledger.snapshot("a", "s1")
    for cluster in range(1, 7):
        storage.write("/vms/a/vda.s1", cluster, 0x20 + cluster)
    ledger.snapshot("a", "s2")
    reads = storage.read_all("/vms/a/vda.s2")
    storage.inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        ledger.delete("a", "s2", strategy="pull")  # pull vda.s1 into vda.s2, delete vda.s1
    assert storage.files["/vms/a/vda.s2"].backing == DISK  # the header was written...
    assert storage.read_all("/vms/a/vda.s2") != reads  # ...before all the data
    recovering = ledger_service(ledger.app, storage)
    recovering.recover("a")
    assert storage.read_all("/vms/a/vda.s2") == reads
    assert "/vms/a/vda.s1" not in storage.files
