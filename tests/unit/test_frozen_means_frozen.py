"""Frozen means frozen: a frozen image's content never changes, even at the same size and inode.

Its mtime and ctime are recorded when it is frozen (after its last legitimate write, at the step
that moves its disk away); any later change is drift. The ctime is not compared for libvirt's
domains (libvirt chowns a running domain's whole chain at each start). Facts recorded before
times were (0) are never compared. Simulated storage: its files have a clock of their own.
"""

from __future__ import annotations

import pytest
from test_drift import BASE, make

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.drift import DiskChecks
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import DriftFound
from snapledger.domain.images import ImageFacts, format_ns
from snapledger.domain.vm import VirtualMachine


def files(storage: SimulatedStorage) -> dict[str, tuple[object, ...]]:
    return {
        p: (i.backing, tuple(sorted(i.clusters.items())), i.mtime, i.ctime)
        for p, i in storage.files.items()
    }


def rewrite_in_place(storage: SimulatedStorage, ledger: Snapledger, path: str) -> None:
    """What a hand-run `virsh blockcommit --active` then `blockjob --abort` leaves: the frozen
    image's allocated cluster holds other data; its size and inode stay as recorded."""
    recorded = ledger.vm("vm").images[path].facts
    cluster = min(storage.files[path].clusters)
    storage.write(path, cluster, 0x66)
    seen = storage.inspect(path, recorded.format)
    assert (seen.size, seen.inode, seen.device) == (recorded.size, recorded.inode, recorded.device)
    assert seen.mtime_ns != recorded.mtime_ns


def test_a_frozen_image_written_at_the_same_size_is_drift_and_every_merge_over_it_is_refused() -> None:
    storage, ledger = make()
    assert ledger.verify("vm") == []
    recorded = ledger.vm("vm").images["/images/base.s1"].facts
    rewrite_in_place(storage, ledger, "/images/base.s1")
    now = storage.inspect("/images/base.s1", "qcow2")

    findings = ledger.verify("vm")
    assert findings == [
        f"vm: /images/base.s1: modified since it was frozen (mtime {format_ns(recorded.mtime_ns)} "
        f"-> {format_ns(now.mtime_ns)})"
    ]
    before = files(storage)
    # s2 froze it (a commit into it, or a pull of it); s3's merge reads it below; a revert to
    # s2 would build on it
    for attempt in (
        lambda: ledger.delete("vm", "s2"),
        lambda: ledger.delete("vm", "s2", strategy="commit"),
        lambda: ledger.delete("vm", "s3"),
        lambda: ledger.delete("vm", "s3", strategy="pull"),
        lambda: ledger.revert("vm", "s2"),
        lambda: ledger.delete("vm", "s3", dry_run=True),
    ):
        with pytest.raises(DriftFound) as refused:
            attempt()
        assert refused.value.exit_code == 3
        assert "/images/base.s1: modified since it was frozen" in str(refused.value)
        assert files(storage) == before, "a refused command changed a file"
        assert ledger.vm("vm").operation is None
    assert ledger.vm("vm").drift_findings
    assert set(ledger.vm("vm").snapshots) == {"s1", "s2", "s3"}


def test_reconcile_records_the_new_times_and_the_next_operation_works() -> None:
    storage, ledger = make()
    rewrite_in_place(storage, ledger, "/images/base.s1")
    before = files(storage)

    shown = ledger.reconcile("vm", dry_run=True)
    assert [c for c in shown.changes if "modified since it was frozen" in c]
    assert "/images/base.s1" in [f.path for f in shown.observed]
    assert ledger.verify("vm"), "a dry run recorded something"

    done = ledger.reconcile("vm")
    assert "/images/base.s1" in [f.path for f in done.observed]
    assert ledger.vm("vm").images["/images/base.s1"].facts == storage.inspect("/images/base.s1", "qcow2")
    assert files(storage) == before, "reconcile wrote an image"
    assert ledger.verify("vm") == [] and not ledger.vm("vm").drift_findings

    ledger.delete("vm", "s3")
    ledger.delete("vm", "s2")
    assert ledger.verify("vm") == []
    assert storage.read_all(ledger.vm("vm").disks["vda"]) == {0: 1, 1: 0x66, 2: 0x12, 3: 0x13}


def test_a_ctime_moved_alone_is_drift_for_a_vm_outside_libvirt() -> None:
    storage, ledger = make()
    storage.chmod("/images/base.s2")  # `chmod 644` to the mode it had: only its ctime moves
    findings = ledger.verify("vm")
    assert len(findings) == 1
    assert findings[0].startswith("vm: /images/base.s2: changed since it was frozen (ctime ")
    assert "mtime the same" in findings[0]
    with pytest.raises(DriftFound):
        ledger.delete("vm", "s3")
    ledger.reconcile("vm")
    assert ledger.verify("vm") == []


def test_for_a_libvirt_domain_only_the_mtime_counts() -> None:
    """libvirt's DAC driver chowns every image of a running domain's chain at each `virsh start`
    (measured: the backing file's ctime moves, its mtime stays): a ctime would call each start
    drift."""
    storage, ledger = make()
    vm = ledger.vm("vm")
    vm.bind_libvirt("qemu:///system", "vm")  # not saved: only what the checks read of it
    checks = DiskChecks(storage)
    storage.chmod("/images/base.s2")  # what `virsh start` does to the chain
    assert checks.drift(vm, checks.look(vm, sorted(vm.images))) == []
    storage.write("/images/base.s2", 2, 0x77)
    assert [f for f in checks.drift(vm, checks.look(vm, sorted(vm.images)))
            if f.startswith("/images/base.s2: modified since it was frozen (mtime ")]


def test_the_active_and_detached_images_may_be_written() -> None:
    storage, ledger = make()
    storage.make_image("/images/mine.qcow2", 16 * CLUSTER)
    ledger.swap_disk("vm", "vda", "/images/mine.qcow2")
    storage.write("/images/mine.qcow2", 5, 0x55)  # the guest writes its active disk
    storage.write("/images/base.s3", 3, 0x99)  # the user goes on using the swapped-out one
    storage.chmod("/images/base.s3")
    assert ledger.verify("vm") == []
    ledger.delete("vm", "s1")  # and operations go on (base.s3 detached: nothing moves for s3)
    assert ledger.verify("vm") == []


class GuestWritesDuringTheOperation(SimulatedStorage):
    """The guest goes on writing its active image (`guest_on`) while the new overlay is made (a
    live snapshot: the domain is switched to the overlay only at the step before SetActive),
    after snapledger looked at it before the operation."""

    guest_on: str | None = None

    def create_overlay(self, path: str, backing: str, backing_format: str, virtual_size: int) -> None:
        super().create_overlay(path, backing, backing_format, virtual_size)
        if self.guest_on is not None:
            self.write(self.guest_on, 9, 0x99)


def test_the_times_are_recorded_when_the_image_is_frozen_after_its_last_write() -> None:
    storage = GuestWritesDuringTheOperation()
    storage.make_image(BASE, 16 * CLUSTER, {0: 1})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": BASE})
    for name in ("s1", "s2", "s3"):
        storage.guest_on = ledger.vm("vm").disks["vda"]
        ledger.snapshot("vm", name)
        frozen = ledger.vm("vm").snapshots[name].disks["vda"]
        assert ledger.vm("vm").images[frozen].facts == storage.inspect(frozen, "qcow2"), name
        assert storage.files[frozen].clusters[9] == 0x99
        assert ledger.verify("vm") == []
    storage.guest_on = ledger.vm("vm").disks["vda"]
    ledger.revert("vm", "s2")  # the abandoned present (deleted) was written to the end too
    storage.guest_on = None
    assert ledger.verify("vm") == []
    ledger.delete("vm", "s3")
    assert ledger.verify("vm") == []


def test_old_facts_without_times_still_load_and_are_never_compared() -> None:
    """Events recorded before times were have no mtime_ns/ctime_ns: they load as 0 (not known)
    and nothing is compared until the image is observed again."""
    old = {
        "path": BASE, "format": "qcow2", "backing": None, "backing_format": None,
        "virtual_size": 16 * CLUSTER, "allocated": CLUSTER, "device": 4242, "inode": 1000,
        "size": 192 * 1024 + CLUSTER,
    }
    facts = ImageFacts.from_dict(old)
    assert (facts.mtime_ns, facts.ctime_ns) == (0, 0)
    assert ImageFacts.from_dict(facts.to_dict()) == facts
    seen = ImageFacts.from_dict({**old, "mtime_ns": 5, "ctime_ns": 6})
    assert facts.identity_differs(seen, check_size=True, check_mtime=True, check_ctime=True) == []

    # a ledger whose Adopted event predates times: it replays, and verify finds nothing to say
    storage = SimulatedStorage()
    storage.make_image(BASE, 16 * CLUSTER, {0: 1})
    storage.make_image("/images/top.qcow2", 16 * CLUSTER, {1: 2}, backing=BASE)
    app = LedgerApplication("memory:")
    images = []
    for path, origin in ((BASE, "found"), ("/images/top.qcow2", "adopted")):
        item = storage.inspect(path).to_dict()
        del item["mtime_ns"], item["ctime_ns"]
        images.append({**item, "origin": origin})
    app.save(VirtualMachine(
        name="vm", disks={"vda": "/images/top.qcow2"}, images=images, pools=[],
        domain_xml=None, at="2025-01-01T00:00:00+00:00",
    ))
    ledger = ledger_service(app, storage)
    assert ledger.vm("vm").images[BASE].facts.mtime_ns == 0
    storage.write(BASE, 0, 0x44)  # unknowable: nothing was recorded to compare with
    assert ledger.verify("vm") == []
    ledger.snapshot("vm", "s1")  # top.qcow2 frozen now: its times are recorded
    storage.write("/images/top.qcow2", 1, 0x45)
    assert [f for f in ledger.verify("vm") if "top.qcow2: modified since it was frozen" in f]


def test_snapledgers_own_writes_never_look_like_drift() -> None:
    """Every image snapledger writes that is not active (a commit's base, a pulled image, a
    rebased child, a repaired one after a crash) has its facts read back by the step."""
    storage, ledger = make()
    ledger.snapshot("vm", "s4")
    ledger.delete("vm", "s2", strategy="commit")  # into base.s1, frozen by s2, now s3's
    assert ledger.verify("vm") == []
    ledger.delete("vm", "s3", strategy="pull")
    assert ledger.verify("vm") == []
    ledger.revert("vm", "s1")
    ledger.snapshot("vm", "s5")
    ledger.revert("vm", "s4")
    assert ledger.verify("vm") == []
    ledger.delete("vm", "s1", branches="pull")  # a branch point: pulled into both
    assert ledger.verify("vm") == []
    storage.inject(crash_at=1)  # the commit dies half way; a new process recovers
    with pytest.raises(SimulatedCrash):
        ledger.delete("vm", "s4", strategy="commit")
    storage.inject()
    recovering = ledger_service(ledger.app, storage)
    assert recovering.recover("vm")
    assert recovering.verify("vm") == []
    recovering.gc("vm", include_detached=True)
    assert recovering.verify("vm") == []
