"""The snapshot tree and the per-image report, on the RFC's second diagram."""

from __future__ import annotations

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import UnknownVm
from snapledger.domain.images import OwnerClass
from snapledger.projections.tree import image_report, snapshot_tree

BASE = "/images/base.qcow2"


@pytest.fixture
def ledger() -> Snapledger:
    storage = SimulatedStorage()
    storage.make_image(BASE, 16 * CLUSTER, {0: 1})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": BASE})
    for name in ("snap1", "snap2", "snap3"):
        ledger.snapshot("vm", name)
    ledger.revert("vm", "snap1")
    return ledger


def test_tree_has_the_alternate_history_and_the_current_snapshot(ledger: Snapledger) -> None:
    tree = snapshot_tree(ledger.view, "vm")
    assert tree.roots == ("snap1",)
    assert tree.current == "snap1" and tree.nodes["snap1"].current
    assert tree.nodes["snap1"].children == ("snap2",)
    assert tree.branches() == [("snap1", "snap2", "snap3")]
    assert tree.present == {"vda": "/images/base.snap1-1"}
    assert tree.nodes["snap2"].frozen == {"vda": "/images/base.snap1"}
    with pytest.raises(UnknownVm):
        snapshot_tree(ledger.view, "nope")


def test_image_report_says_why_each_image_stays(ledger: Snapledger) -> None:
    base = image_report(ledger.view, BASE)
    assert base.owner is OwnerClass.ADOPTED and not base.may_delete and not base.may_write
    assert "holds snapshot snap1 of vm" in base.needed_because
    assert set(base.children) == {"/images/base.snap1", "/images/base.snap1-1"}
    present = image_report(ledger.view, "/images/base.snap1-1")
    assert present.needed_because == ("active image of vm/vda",)
    assert present.owner is OwnerClass.MANAGED and not present.may_delete
    assert not present.may_write  # the guest writes it; nothing may commit into it
    frozen = image_report(ledger.view, "/images/base.snap2")
    assert frozen.needed_because == ("holds snapshot snap3 of vm",)
