"""Small histories on simulated storage that several unit tests build on (the mutation kills,
docs/reliability.md, and the read-back checks)."""

from __future__ import annotations

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage

IMG = "/images"
BASE = f"{IMG}/base.qcow2"
VSIZE = 16 * CLUSTER


def two_vms() -> tuple[SimulatedStorage, Snapledger]:
    storage = SimulatedStorage()
    storage.make_image("/vms/a/vda.qcow2", 16 * CLUSTER, {0: 0x11})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/vda.qcow2"})
    return storage, ledger


def vm_with(*, snapshots: int, disks: tuple[str, ...] = ("vda",)) -> tuple[SimulatedStorage, Snapledger]:
    """VM `vm` on base images in /images with snapshots s1..sN, each layer written."""
    storage = SimulatedStorage()
    paths = {}
    for disk in disks:
        paths[disk] = BASE if disk == "vda" else f"{IMG}/{disk}.qcow2"
        storage.make_image(paths[disk], VSIZE, {0: 0x10})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", paths)
    for n in range(1, snapshots + 1):
        ledger.snapshot("vm", f"s{n}")
        storage.write(ledger.vm("vm").disks["vda"], n, 0x20 + n)
    return storage, ledger


def user_overlay_over_frozen_s2() -> tuple[SimulatedStorage, Snapledger, str]:
    """s2's frozen image (managed) has one child left: the user's own overlay, the active disk."""
    storage, ledger = vm_with(snapshots=2)
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    own = f"{IMG}/own.qcow2"
    storage.make_image(own, VSIZE, {9: 0x99}, backing=frozen)
    ledger.swap_disk("vm", "vda", own)
    ledger.gc("vm", include_detached=True)  # the managed present it replaced goes
    assert [c for c in storage.files if storage.files[c].backing == frozen] == [own]
    return storage, ledger, own


def branches() -> tuple[SimulatedStorage, Snapledger]:
    storage, ledger = vm_with(snapshots=2)
    ledger.snapshot("vm", "s3")
    ledger.revert("vm", "s2")
    return storage, ledger


def swapped() -> tuple[SimulatedStorage, Snapledger]:
    storage, ledger = vm_with(snapshots=3)
    frozen = ledger.vm("vm").snapshots["s3"].disks["vda"]
    storage.make_image(f"{IMG}/own.qcow2", VSIZE, {9: 0x99}, backing=frozen)
    ledger.swap_disk("vm", "vda", f"{IMG}/own.qcow2")  # base.s3 detached, kept
    ledger.snapshot("vm", "s4")
    return storage, ledger


def shared_frozen() -> tuple[SimulatedStorage, Snapledger]:
    storage, ledger = branches()
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.make_image("/vms/vm2/d.qcow2", VSIZE, {}, backing=frozen)
    ledger.adopt("vm2", {"vda": "/vms/vm2/d.qcow2"}, pools=[IMG])
    ledger.snapshot("vm2", "t1")
    return storage, ledger


def template() -> tuple[SimulatedStorage, Snapledger]:
    storage = SimulatedStorage()
    storage.make_image("/pool/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/pool/u.qcow2", VSIZE, {1: 0x11}, backing="/pool/t.qcow2")
    storage.make_image("/vms/a/a.qcow2", VSIZE, {}, backing="/pool/u.qcow2")
    storage.make_image("/vms/b/b.qcow2", VSIZE, {}, backing="/pool/t.qcow2")
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/a.qcow2"}, pools=["/pool"])
    ledger.adopt("b", {"vda": "/vms/b/b.qcow2"}, pools=["/pool"])
    ledger.snapshot("a", "s1")
    ledger.snapshot("b", "s1")
    return storage, ledger


def crashed() -> tuple[SimulatedStorage, Snapledger]:
    """A delete killed after its first storage step: the operation is open."""
    storage, ledger = vm_with(snapshots=3)
    storage.inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        ledger.delete("vm", "s2")
    return storage, ledger


def two_hosts(storage: SimulatedStorage) -> tuple[Snapledger, Snapledger]:
    """Services of hosts `hosta` and `hostb` on one in-memory ledger and one simulated storage."""
    app = LedgerApplication("memory:")
    return ledger_service(app, storage, host="hosta"), ledger_service(app, storage, host="hostb")


def two_hosts_shared() -> tuple[SimulatedStorage, Snapledger]:
    """One template in a shared directory under a VM of host a (adopted first) and of host b."""
    storage = SimulatedStorage()
    storage.make_image("/shared/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/a/a.qcow2", VSIZE, {}, backing="/shared/t.qcow2")
    storage.make_image("/b/b.qcow2", VSIZE, {}, backing="/shared/t.qcow2")
    a, b = two_hosts(storage)
    a.adopt("va", {"vda": "/a/a.qcow2"}, shared=["/shared"])
    b.adopt("vb", {"vda": "/b/b.qcow2"}, shared=["/shared"])
    b.snapshot("vb", "s1")
    # hostb's VM freezes an image in the shared directory that host a's VM then rests on
    storage.make_image("/shared/z.qcow2", VSIZE, {2: 0x12})
    b.adopt("zb", {"vda": "/shared/z.qcow2"}, shared=["/shared"])
    b.snapshot("zb", "s1")
    storage.make_image("/a/aa.qcow2", VSIZE, {}, backing="/shared/z.qcow2")
    a.adopt("aa", {"vda": "/a/aa.qcow2"}, shared=["/shared"])
    return storage, b


SCENARIOS = {
    "chain": lambda: vm_with(snapshots=3),
    "branches": branches,
    "swapped": swapped,
    "shared frozen": shared_frozen,
    "template": template,
    "crashed": crashed,
    "two hosts": two_hosts_shared,
}
