"""A VM's files stay in its directories (its disks' and its pools), symlinks resolved; an image
another process holds is a conflict that records nothing. Over simulated storage."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import BadPath, DriftFound, ImageInUse, StorageError
from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.names import is_within
from snapledger.domain.vm import VirtualMachine

SIZE = 16 * CLUSTER
TEMPLATE = "/templates/t.qcow2"
DISK = "/vms/a/vda.qcow2"
STRAY = "/elsewhere/stray.qcow2"


def world() -> tuple[SimulatedStorage, Snapledger]:
    storage = SimulatedStorage()
    storage.make_image(TEMPLATE, SIZE, {0: 0x70})
    storage.make_image(STRAY, SIZE, {0: 0xEE})
    storage.make_image(DISK, SIZE, {1: 0x11}, backing=TEMPLATE)
    return storage, ledger_service(LedgerApplication("memory:"), storage)


def positions(ledger: Snapledger) -> int:
    return ledger.app.recorder.max_notification_id() or 0


def with_snapshots(storage: SimulatedStorage, ledger: Snapledger) -> None:
    ledger.adopt("a", {"vda": DISK}, pools=["/templates"])
    for name, cluster in (("s1", 2), ("s2", 3)):
        ledger.snapshot("a", name)
        storage.write(ledger.vm("a").disks["vda"], cluster, 0x20 + cluster)


def test_adopt_refuses_a_chain_outside_and_names_the_pool_to_add() -> None:
    storage, ledger = world()
    with pytest.raises(BadPath) as refused:
        ledger.adopt("a", {"vda": DISK})
    assert refused.value.exit_code == 2
    assert TEMPLATE in str(refused.value) and "add --pool /templates" in str(refused.value)
    assert positions(ledger) == 0
    ledger.adopt("a", {"vda": DISK}, pools=["/templates"])
    assert set(ledger.vm("a").images) == {DISK, TEMPLATE}


def test_a_symlinked_directory_is_resolved_first() -> None:
    storage, ledger = world()
    storage.symlink("/vms/a/tpl", "/templates")
    storage.files[DISK].backing = "/vms/a/tpl/t.qcow2"
    with pytest.raises(BadPath, match="resolves to /templates/t.qcow2"):
        ledger.adopt("a", {"vda": DISK})
    assert positions(ledger) == 0


def test_swap_disk_keeps_to_the_vms_directories() -> None:
    storage, ledger = world()
    ledger.adopt("a", {"vda": DISK}, pools=["/templates"])
    storage.make_image("/vms/a/over-stray.qcow2", SIZE, {}, backing=STRAY)
    storage.make_image("/elsewhere/own.qcow2", SIZE, {})
    before = positions(ledger)
    for path in ("/vms/a/over-stray.qcow2", "/elsewhere/own.qcow2"):
        with pytest.raises(BadPath, match="outside the allowed directories of VM 'a'"):
            ledger.swap_disk("a", "vda", path)
    assert positions(ledger) == before
    storage.make_image("/vms/a/fine.qcow2", SIZE, {}, backing=TEMPLATE)
    ledger.swap_disk("a", "vda", "/vms/a/fine.qcow2")


@pytest.mark.parametrize("rewritten", [TEMPLATE, "/vms/a/vda.s1", "/vms/a/vda.s2"])
def test_a_backing_pointing_outside_refuses_every_merge(rewritten: str) -> None:
    storage, ledger = world()
    with_snapshots(storage, ledger)
    image = storage.files[rewritten]
    image.backing, image.backing_format = STRAY, "qcow2"
    assert any(f"backing file {STRAY} is outside" in f for f in ledger.verify("a"))
    files = {p: (i.backing, dict(i.clusters)) for p, i in storage.files.items()}
    for strategy in ("commit", "pull"):
        with pytest.raises(DriftFound, match="outside the VM's allowed directories"):
            ledger.delete("a", "s2", strategy=strategy)
    assert {p: (i.backing, dict(i.clusters)) for p, i in storage.files.items()} == files
    assert ledger.vm("a").operation is None and "s2" in ledger.vm("a").snapshots


def test_recover_never_follows_a_backing_rewritten_while_the_operation_was_open() -> None:
    storage, ledger = world()
    with_snapshots(storage, ledger)
    storage.inject(crash_at=1)  # dies at the commit of vda.s2 into vda.s1
    with pytest.raises(SimulatedCrash):
        ledger.delete("a", "s2", strategy="commit")
    storage.inject()
    storage.files[TEMPLATE].backing, storage.files[TEMPLATE].backing_format = STRAY, "qcow2"
    recovering = ledger_service(ledger.app, storage)
    with pytest.raises(StorageError) as refused:
        recovering.recover("a")
    assert refused.value.exit_code == 3 and STRAY in str(refused.value)
    assert storage.files["/vms/a/vda.s1"].clusters == {2: 0x22}  # the commit did not run
    storage.files[TEMPLATE].backing, storage.files[TEMPLATE].backing_format = None, None
    recovering.recover("a")
    assert storage.read_all(recovering.vm("a").disks["vda"]) == {0: 0x70, 1: 0x11, 2: 0x22, 3: 0x23}


def a_delete_cut_short() -> tuple[SimulatedStorage, Snapledger]:
    """s2's delete (a commit) recorded, then the process died at its first storage call; a new
    process on the same store, to recover it."""
    storage, ledger = world()
    with_snapshots(storage, ledger)
    storage.inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        ledger.delete("a", "s2", strategy="commit")
    return storage, ledger_service(ledger.app, storage)


def test_recover_meeting_a_held_image_is_a_conflict_that_records_nothing() -> None:
    """Another process holds the commit's target: recover sees QEMU's lock before it takes the
    operation over, records nothing, and finishes once the holder has let go."""
    storage, recovering = a_delete_cut_short()
    before = positions(recovering)
    storage.hold("/vms/a/vda.s1")
    for _ in range(2):
        with pytest.raises(ImageInUse) as busy:
            recovering.recover("a")
        assert busy.value.exit_code == 4 and "snapledger recover" in str(busy.value)
    assert positions(recovering) == before
    op = recovering.vm("a").operation
    assert op is not None and op.failure is None and op.done == 0
    storage.release("/vms/a/vda.s1")
    assert recovering.recover("a") == [f"a: finished delete {op.op_id}"]


def test_recover_whose_merge_finds_the_image_locked_records_no_failure() -> None:
    """The lock appears only when qemu-img opens the image: recover had taken the operation over
    (OperationResumed), records no failure, and a later recover finishes it."""
    storage, recovering = a_delete_cut_short()
    before = positions(recovering)
    storage.inject(busy_at=1)
    with pytest.raises(ImageInUse) as busy:
        recovering.recover("a")
    assert busy.value.exit_code == 4 and "snapledger recover" in str(busy.value)
    recorded = [type(e).__name__ for e, p in recovering.app.events_after(before)]
    assert recorded == ["OperationResumed"]
    op = recovering.vm("a").operation
    assert op is not None and op.failure is None and op.done == 0
    storage.inject()
    assert recovering.recover("a") == [f"a: finished delete {op.op_id}"]


def test_a_fresh_delete_meeting_a_held_image_is_rolled_back() -> None:
    storage, ledger = world()
    with_snapshots(storage, ledger)
    files = {p: (i.backing, dict(i.clusters)) for p, i in storage.files.items()}
    storage.inject(busy_at=1)
    with pytest.raises(ImageInUse, match="nothing was done"):
        ledger.delete("a", "s2", strategy="commit")
    storage.inject()
    assert {p: (i.backing, dict(i.clusters)) for p, i in storage.files.items()} == files
    assert ledger.vm("a").operation is None and "s2" in ledger.vm("a").snapshots
    ledger.delete("a", "s2", strategy="commit")


def test_a_vm_adopted_before_confinement_keeps_working() -> None:
    """An Adopted event stored before chains were confined has no `confined`: the directories
    of every file it recorded stay allowed, so an upgrade refuses nothing that worked before."""
    storage, ledger = world()
    facts = [f.to_dict() for f in storage.inspect_chain(DISK)]
    images = [{**facts[0], "origin": "adopted"}, {**facts[1], "origin": "found"}]
    old = VirtualMachine(name="a", disks={"vda": DISK}, images=images, pools=[], domain_xml=None,
                         at="2026-11-01T00:00:00+00:00")  # what replaying such an event gives
    assert old.allowed_dirs() == {"/vms/a", "/templates"}
    claims = [ImageRegistration(path=p, vm="a") for p in (DISK, TEMPLATE)]
    ledger.app.save(old, *claims)
    ledger.snapshot("a", "s1")
    storage.write(ledger.vm("a").disks["vda"], 2, 0x22)
    ledger.delete("a", "s1", "commit")  # reads the template below: allowed, as before
    assert ledger.verify("a") == []
    with pytest.raises(BadPath):  # a VM adopted now is confined: the template needs a pool
        world()[1].adopt("b", {"vda": DISK})


def test_the_root_directory_is_a_normalised_pool() -> None:
    storage, ledger = world()
    ledger.adopt("a", {"vda": DISK}, pools=["/"])  # everything is below /
    assert ledger.vm("a").allowed_dirs() == {"/vms/a", "/"}
    with pytest.raises(BadPath, match="not normalised"):
        world()[1].adopt("b", {"vda": DISK}, pools=["//"])


_parts = st.lists(st.sampled_from(["a", "b", "ab", "a.b", "..a", "-"]), max_size=4)


@given(path=_parts, directory=_parts)
def test_within_is_a_common_path_never_a_common_prefix(path: list[str], directory: list[str]) -> None:
    # is_within is a string comparison for speed; it must mean what posixpath.commonpath means
    # for resolved, normalised paths ("/a/bc" is not within "/a/b").
    p, d = "/" + "/".join(path), "/" + "/".join(directory)
    assert is_within(p, [d]) == (posixpath.commonpath([p, d]) == d)
