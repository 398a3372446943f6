"""A file replaced behind our back is never written or deleted, even mid-operation."""

from __future__ import annotations

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import DriftFound, StorageError

BASE = "/images/base.qcow2"


def make(storage: SimulatedStorage | None = None) -> tuple[SimulatedStorage, Snapledger]:
    """base.qcow2 <- base.s1 <- base.s2 <- base.s3 (active); s1 froze base.qcow2, s2 base.s1,
    s3 base.s2; each overlay holds one cluster the guest wrote."""
    storage = storage or SimulatedStorage()
    storage.make_image(BASE, 16 * CLUSTER, {0: 1})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": BASE})
    for name, cluster in (("s1", 1), ("s2", 2), ("s3", 3)):
        ledger.snapshot("vm", name)
        storage.write(ledger.vm("vm").disks["vda"], cluster, 0x10 + cluster)
    return storage, ledger


def replace_file(storage: SimulatedStorage, path: str) -> None:
    """Same content and backing, another file (a new inode), as `cp` then `mv` would leave it."""
    image = storage.files.pop(path)
    storage.make_image(path, image.virtual_size, image.clusters, backing=image.backing)


def test_a_replaced_frozen_image_refuses_the_delete_and_changes_nothing() -> None:
    storage, ledger = make()
    replace_file(storage, "/images/base.s1")
    before = {p: dict(i.clusters) for p, i in storage.files.items()}
    with pytest.raises(DriftFound) as refused:
        ledger.delete("vm", "s2", strategy="commit")
    assert refused.value.exit_code == 3 and "inode" in str(refused.value)
    assert {p: dict(i.clusters) for p, i in storage.files.items()} == before
    assert ledger.vm("vm").drift_findings and ledger.vm("vm").operation is None
    assert ledger.verify("vm")


def test_a_file_replaced_while_an_operation_is_open_is_not_deleted() -> None:
    storage, ledger = make()
    storage.inject(crash_at=2)  # s2 by commit: base.s2 into base.s1 (call 1), then delete base.s2
    with pytest.raises(SimulatedCrash):
        ledger.delete("vm", "s2", strategy="commit")
    storage.inject()
    replace_file(storage, "/images/base.s2")  # someone swaps the file before recovery
    recovering = ledger_service(ledger.app, storage)
    with pytest.raises(StorageError) as refused:
        recovering.recover("vm")
    assert refused.value.exit_code == 3 and "replaced" in str(refused.value)
    assert storage.exists("/images/base.s2")
    vm = recovering.vm("vm")
    assert vm.operation is not None and vm.operation.failure and vm.drift_findings
