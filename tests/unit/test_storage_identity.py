"""Storage identity across hosts (semantics.md, "Many hosts, one ledger"): an image is (home host,
path) on a host's own storage and its path alone under a directory some VM declared shared.
Two hosts over one memory ledger, each with its own simulated files and one shared tree
(tests/host_storage.py); what every snapshot and present reads is checked on the simulated
disks, not asked of snapledger."""

from __future__ import annotations

import json

import pytest
from eventsourcing.persistence import StoredEvent
from host_storage import HostStorage, HostWorld

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash
from snapledger.domain.errors import (
    BadInput,
    BadPath,
    DriftFound,
    HomeElsewhere,
    OperationInProgress,
    Refused,
)
from snapledger.domain.image_registry import image_id
from snapledger.domain.images import OwnerClass
from snapledger.domain.ledger_hash import RecordedBy
from snapledger.projections.dag import ImageDag
from snapledger.testing.checks import changes

VSIZE = 64 * CLUSTER


def hosts(world: HostWorld | None = None) -> tuple[HostWorld, LedgerApplication, dict[str, Snapledger]]:
    world = world or HostWorld()
    app = LedgerApplication("memory:")
    return world, app, {h: ledger_service(app, world.host(h), host=h) for h in ("hosta", "hostb")}


def reads(storage: HostStorage, path: str) -> dict[int, int]:
    return storage.read_all(path)


def test_the_same_local_path_on_two_hosts_is_two_images() -> None:
    """Both hosts keep their VM's disk at /images/r0.qcow2 (different files): each adopts, takes
    snapshots and deletes them on its own files; neither is refused for the other's, and every
    snapshot reads what it read."""
    world, _, ledgers = hosts()
    a, b = world.host("hosta"), world.host("hostb")
    a.make_image("/images/r0.qcow2", VSIZE, {0: 0xA0})
    b.make_image("/images/r0.qcow2", VSIZE, {0: 0xB0})
    ledgers["hosta"].adopt("web", {"vda": "/images/r0.qcow2"})
    ledgers["hostb"].adopt("db", {"vda": "/images/r0.qcow2"})  # refused before hosts: "used by VM web"
    for host, storage, vm, byte in (("hosta", a, "web", 0xA1), ("hostb", b, "db", 0xB1)):
        ledger = ledgers[host]
        ledger.snapshot(vm, "s1")
        storage.write(ledger.vm(vm).disks["vda"], 1, byte)
        ledger.snapshot(vm, "s2")
        storage.write(ledger.vm(vm).disks["vda"], 2, byte + 1)
    assert ledgers["hosta"].vm("web").disks == ledgers["hostb"].vm("db").disks == {"vda": "/images/r0.s2"}
    for host, storage, vm, byte in (("hosta", a, "web", 0xA1), ("hostb", b, "db", 0xB1)):
        ledger = ledgers[host]
        view = ledger.refresh()
        node = ImageDag(view, home=host).nodes["/images/r0.qcow2"]
        assert node.vms == (vm,) and node.owner is OwnerClass.ADOPTED  # its own, writable
        ledger.delete(vm, "s1")  # commits r0.s1 into the host's own r0.qcow2
        s2 = ledger.vm(vm).snapshot("s2").disks["vda"]
        assert reads(storage, s2) == {0: byte - 1, 1: byte}
        assert reads(storage, ledger.vm(vm).disks["vda"]) == {0: byte - 1, 1: byte, 2: byte + 1}
    registrations = ledgers["hosta"].refresh().registered["/images/r0.qcow2"]
    assert sorted(r.host for r in registrations) == ["hosta", "hostb"]


def test_a_template_on_shared_storage_is_one_image_read_only_for_every_host() -> None:
    """hosta's web and hostb's db both rest on /shared/t.qcow2 (declared shared by hosta only; to
    hostb it is a pool: a shared directory is shared for the whole ledger). Both take and delete snapshots; the
    template is never written or deleted, and reads what it read."""
    world, _, ledgers = hosts()
    a, b = world.host("hosta"), world.host("hostb")
    a.make_image("/shared/t.qcow2", VSIZE, {0: 0x70, 5: 0x75})
    a.make_image("/a/web.qcow2", VSIZE, {1: 0xA1}, backing="/shared/t.qcow2")
    b.make_image("/b/db.qcow2", VSIZE, {1: 0xB1}, backing="/shared/t.qcow2")
    template = reads(a, "/shared/t.qcow2")
    ledgers["hosta"].adopt("web", {"vda": "/a/web.qcow2"}, shared=["/shared"])
    ledgers["hostb"].adopt("db", {"vda": "/b/db.qcow2"}, pools=["/shared"])
    view = ledgers["hosta"].refresh()
    for host in ("hosta", "hostb"):
        node = ImageDag(view, home=host).nodes["/shared/t.qcow2"]
        assert node.owner is OwnerClass.READ_ONLY and node.vms == ("db", "web")
    for snap in ("s1", "s2"):
        for host, storage, vm in (("hosta", a, "web"), ("hostb", b, "db")):
            ledger = ledgers[host]
            ledger.snapshot(vm, snap)
            storage.write(ledger.vm(vm).disks["vda"], 2, 0x22)
            ledger.delete(vm, snap)
    assert reads(a, "/shared/t.qcow2") == reads(b, "/shared/t.qcow2") == template
    assert len(ledgers["hosta"].refresh().registered["/shared/t.qcow2"]) == 1  # one image


def test_a_user_file_on_this_host_at_a_path_another_host_uses_still_keeps_what_it_rests_on() -> None:
    """hosta's ledger knows /images/keep.qcow2 (its own file). On hostb a user's own overlay at
    that same path rests on hostb's frozen image: hostb's delete must see it as a file the
    ledger does not know (hostb's), keep the image, and leave the user's file reading the same.
    Had the other host's path counted as known here, the merge would have broken the user's file."""
    world, _, ledgers = hosts()
    a, b = world.host("hosta"), world.host("hostb")
    a.make_image("/images/keep.qcow2", VSIZE, {0: 0xA0})
    ledgers["hosta"].adopt("web", {"vda": "/images/keep.qcow2"})
    b.make_image("/images/db.qcow2", VSIZE, {0: 0xB0})
    ledgers["hostb"].adopt("db", {"vda": "/images/db.qcow2"})
    ledgers["hostb"].snapshot("db", "s1")  # frozen: /images/db.qcow2, active /images/db.s1
    b.write("/images/db.s1", 1, 0xB1)
    ledgers["hostb"].snapshot("db", "s2")  # frozen: /images/db.s1
    b.write("/images/db.s2", 4, 0xB2)  # what a merge of s2 away would move into db.s1
    b.make_image("/images/keep.qcow2", VSIZE, {3: 0xEE}, backing="/images/db.s1")  # the user's
    before = reads(b, "/images/keep.qcow2")
    ledgers["hostb"].delete("db", "s2")
    assert b.exists("/images/db.s1")
    assert reads(b, "/images/keep.qcow2") == before


def test_adopting_another_hosts_disk_path_on_shared_storage_is_refused() -> None:
    """On shared storage a path is one file: hostb can't take hosta's disk as its own."""
    world, _, ledgers = hosts()
    world.host("hosta").make_image("/shared/web.qcow2", VSIZE, {0: 0x11})
    ledgers["hosta"].adopt("web", {"vda": "/shared/web.qcow2"}, shared=["/shared"])
    with pytest.raises(Refused, match="used by VM web"):
        ledgers["hostb"].adopt("db", {"vda": "/shared/web.qcow2"}, shared=["/shared"])


def test_a_registration_made_before_hosts_is_its_recording_hosts_own() -> None:
    """A `FirstUsed` stored before hosts has no host: it is read with the host its chain record
    names, found by that host for its own file at that path, and not by another host."""
    world = HostWorld()
    a = world.host("hosta")
    a.make_image("/images/r0.qcow2", VSIZE, {0: 0xA0})
    fresh = LedgerApplication("memory:")
    ledger_service(fresh, a, host="made-now").adopt("web", {"vda": "/images/r0.qcow2"})
    legacy = LedgerApplication("memory:")
    for stored in fresh.recorder.select_notifications(start=1, limit=100):
        state = json.loads(stored.state)
        state.pop("home", None)  # as the code before hosts stored them, under the ids it gave
        state.pop("host", None)
        registered = stored.topic.endswith("ImageRegistration.FirstUsed")
        originator = image_id(state["path"]) if registered else stored.originator_id
        legacy.recorder.insert_events(
            [StoredEvent(originator, stored.originator_version, stored.topic, json.dumps(state).encode())],
            recorded_by=RecordedBy("ann", "hosta", "0.1"),
        )
    on_a = ledger_service(legacy, a, host="hosta")
    registration = on_a.registry(on_a.vm("web")).find("/images/r0.qcow2")
    assert registration is not None and registration.host == "hosta"
    assert registration.id == image_id("/images/r0.qcow2")  # still the id it was made with
    on_a.snapshot("web", "s1")  # works on, with its registrations
    b = world.host("hostb")
    b.make_image("/images/r0.qcow2", VSIZE, {0: 0xB0})
    ledger_service(legacy, b, host="hostb").adopt("db", {"vda": "/images/r0.qcow2"})


def shared_vm(world: HostWorld, ledgers: dict[str, Snapledger]) -> None:
    """hosta's VM web, its disk and every overlay in /shared: a VM that can move."""
    world.host("hosta").make_image("/shared/web.qcow2", VSIZE, {0: 0x11})
    ledgers["hosta"].adopt("web", {"vda": "/shared/web.qcow2"}, shared=["/shared"])
    ledgers["hosta"].snapshot("web", "s1")
    world.host("hosta").write("/shared/web.s1", 1, 0x12)
    ledgers["hosta"].snapshot("web", "s2")


def test_a_vm_on_shared_storage_moves_and_its_new_home_changes_it() -> None:
    world, _, ledgers = hosts()
    shared_vm(world, ledgers)
    with pytest.raises(HomeElsewhere):  # only its home moves it (or --take-over on the new one)
        ledgers["hostb"].move("web", "hostb")
    ledgers["hosta"].move("web", "hostb")
    assert ledgers["hostb"].vm("web").home == "hostb"
    with pytest.raises(HomeElsewhere, match="lives on host 'hostb'"):
        ledgers["hosta"].snapshot("web", "s3")
    ledgers["hostb"].delete("web", "s1")
    assert reads(world.host("hostb"), ledgers["hostb"].vm("web").snapshot("s2").disks["vda"]) == {0: 0x11, 1: 0x12}


def test_a_vm_with_an_image_on_a_hosts_own_storage_does_not_move() -> None:
    world, _, ledgers = hosts()
    world.host("hosta").make_image("/images/web.qcow2", VSIZE, {0: 0x11})
    ledgers["hosta"].adopt("web", {"vda": "/images/web.qcow2"}, shared=["/shared"])
    before = changes(ledgers["hosta"].app)
    with pytest.raises(Refused, match="not on shared storage"):
        ledgers["hosta"].move("web", "hostb")
    with pytest.raises(Refused, match="not on shared storage"):
        ledgers["hostb"].move("web", "hostb", take_over=True)
    assert changes(ledgers["hosta"].app) == before


def test_take_over_then_recover_finishes_what_the_dead_host_left_open() -> None:
    """hosta dies in the middle of a delete (a crash after the commit's first half); hostb takes
    web over on the operator's word, and its recover finishes the delete: every snapshot reads
    what it read, and hosta is refused from then on."""
    world, _, ledgers = hosts()
    shared_vm(world, ledgers)
    world.host("hosta").write("/shared/web.s2", 2, 0x13)
    expected = {
        "s1": reads(world.host("hosta"), "/shared/web.qcow2"),
        "s2": reads(world.host("hosta"), "/shared/web.s1"),
        "present": reads(world.host("hosta"), "/shared/web.s2"),
    }
    world.host("hosta").inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        ledgers["hosta"].delete("web", "s2", strategy="commit")
    with pytest.raises(OperationInProgress):  # its home must finish it first, or be taken from
        ledgers["hosta"].move("web", "hostb")
    with pytest.raises(BadInput, match="run on the new home"):
        ledgers["hosta"].move("web", "hostb", take_over=True)
    ledgers["hostb"].move("web", "hostb", take_over=True)
    finished = ledgers["hostb"].recover()
    assert len(finished) == 1 and finished[0].startswith("web: ")
    vm = ledgers["hostb"].vm("web")
    assert vm.operation is None and "s2" not in vm.snapshots
    b = world.host("hostb")
    assert reads(b, vm.snapshot("s1").disks["vda"]) == expected["s1"]
    assert reads(b, vm.disks["vda"]) == expected["present"]
    with pytest.raises(HomeElsewhere):
        ledgers["hosta"].recover("web")


def test_the_root_is_no_shared_directory() -> None:
    world, _, ledgers = hosts()
    world.host("hosta").make_image("/images/web.qcow2", VSIZE, {0: 0x11})
    with pytest.raises(BadInput, match="--shared /"):
        ledgers["hosta"].adopt("web", {"vda": "/images/web.qcow2"}, shared=["/"])
    assert ledgers["hosta"].last_position() == 0


def test_an_image_is_never_adopted_under_a_second_name_through_a_symbolic_link() -> None:
    """hosta froze /shared/web.qcow2 for its snapshot s1. hostb names the same file through a
    symlinked directory (/alias -> /shared), as a disk or as the backing file of its own disk:
    refused as bad input, nothing recorded, and s1 reads what it read (a second name would have
    made the file a second image, which hostb's delete could then commit into)."""
    world, app, ledgers = hosts()
    a, b = world.host("hosta"), world.host("hostb")
    a.make_image("/shared/web.qcow2", VSIZE, {0: 0x22})
    ledgers["hosta"].adopt("web", {"vda": "/shared/web.qcow2"}, shared=["/shared"])
    ledgers["hosta"].snapshot("web", "s1")
    b.symlink("/alias", "/shared")
    b.make_image("/b/db.qcow2", VSIZE, {1: 0xB1}, backing="/alias/web.qcow2")
    recorded = app.last_position()
    with pytest.raises(BadPath, match="goes through a symbolic link .the file is /shared/web.qcow2"):
        ledgers["hostb"].adopt("twin", {"vda": "/alias/web.qcow2"}, shared=["/shared"])
    with pytest.raises(BadPath, match="backing file /alias/web.qcow2 goes through a symbolic link"):
        ledgers["hostb"].adopt("db", {"vda": "/b/db.qcow2"}, shared=["/shared"])
    with pytest.raises(BadPath, match="--pool /alias goes through a symbolic link"):
        ledgers["hostb"].adopt("db", {"vda": "/b/db.qcow2"}, pools=["/alias"])
    assert app.last_position() == recorded
    assert reads(a, "/shared/web.qcow2") == {0: 0x22}


def test_a_directory_holding_a_hosts_own_images_is_not_declared_shared_later() -> None:
    """hosta and hostb each keep their own /images/r0.qcow2 (two images). A third VM declaring
    /images shared would make them one, and let hosta's VM move to hostb, which can't see hosta's
    file: refused (exit 3), nothing recorded."""
    world, app, ledgers = hosts()
    world.host("hosta").make_image("/images/r0.qcow2", VSIZE, {0: 0xA0})
    world.host("hostb").make_image("/images/r0.qcow2", VSIZE, {0: 0xB0})
    world.host("hostb").make_image("/other/o.qcow2", VSIZE, {0: 0x0F})
    ledgers["hosta"].adopt("web", {"vda": "/images/r0.qcow2"})
    ledgers["hostb"].adopt("db", {"vda": "/images/r0.qcow2"})
    recorded = app.last_position()
    with pytest.raises(Refused, match=r"--shared /images: /images/r0.qcow2 there is already host host[ab]'s own image"):
        ledgers["hostb"].adopt("other", {"vda": "/other/o.qcow2"}, shared=["/images"])
    assert app.last_position() == recorded
    with pytest.raises(Refused):
        ledgers["hosta"].move("web", "hostb")


def test_reconcile_never_records_a_backing_file_by_a_second_name() -> None:
    """By hand, web's disk is rebased onto db's disk through a symlinked directory. reconcile
    would record that file as an image of web's (read-only there, but managed for db, which may
    delete it): it can't record it, says why, and records nothing."""
    world, app, ledgers = hosts()
    a = world.host("hosta")
    a.make_image("/images/db.qcow2", VSIZE, {0: 0xD0})
    a.make_image("/images/web.qcow2", VSIZE, {1: 0xE1})
    ledger = ledgers["hosta"]
    ledger.adopt("db", {"vda": "/images/db.qcow2"})
    ledger.adopt("web", {"vda": "/images/web.qcow2"}, pools=["/images"])
    a.symlink("/alias", "/images")
    a.rebase_unsafe("/images/web.qcow2", "/alias/db.qcow2", "qcow2", fmt="qcow2")
    recorded = changes(app)
    with pytest.raises(DriftFound, match="backing file /alias/db.qcow2 goes through a symbolic link"):
        ledger.reconcile("web")
    assert changes(app) == recorded
