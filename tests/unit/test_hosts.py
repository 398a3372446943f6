"""Many hosts on one ledger (semantics.md, "Many hosts, one ledger"), the host's part: every VM
has a home host, only that host changes it or looks at its disks (exit 4 otherwise, nothing
recorded), and sweeps without a VM stay home. Two hosts here are two services on one memory
ledger over one simulated storage, each acting as its own host."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from libvirt_fake import FakeLibvirt

from snapledger.adapters.compose import ledger_service, recording_context, this_host
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor, refuse_remote
from snapledger.adapters.service.adopt_libvirt import adopt_libvirt
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import BadInput, BadName, HomeElsewhere
from snapledger.domain.ledger_hash import UNKNOWN_HOST, RecordedBy
from snapledger.domain.names import check_host
from snapledger.domain.vm import vm_id
from snapledger.projections.documents import vm_document, vm_rows

A_DISK, B_DISK = "/a/web.qcow2", "/b/db.qcow2"
VSIZE = 64 * CLUSTER


def two_hosts() -> tuple[SimulatedStorage, Snapledger, Snapledger]:
    """Host `hosta` with VM web (snapshots s1, s2), host `hostb` with VM db, one ledger."""
    storage = SimulatedStorage()
    storage.make_image(A_DISK, VSIZE, {0: 0x10})
    storage.make_image(B_DISK, VSIZE, {0: 0x20})
    app = LedgerApplication("memory:")
    a = ledger_service(app, storage, host="hosta")
    b = ledger_service(app, storage, host="hostb")
    a.adopt("web", {"vda": A_DISK})
    a.snapshot("web", "s1")
    storage.write(a.vm("web").disks["vda"], 1, 0x11)
    a.snapshot("web", "s2")
    b.adopt("db", {"vda": B_DISK})
    return storage, a, b


def test_a_vm_lives_on_the_host_that_adopted_it() -> None:
    _, a, b = two_hosts()
    assert a.vm("web").home == "hosta" and b.vm("db").home == "hostb"
    view = b.refresh()
    assert vm_document(view, "web")["host"] == "hosta"
    assert [(r["vm"], r["host"]) for r in vm_rows(view)] == [("db", "hostb"), ("web", "hosta")]
    assert [r["vm"] for r in vm_rows(view, living_on="hostb")] == ["db"]  # list --mine


OTHER_HOSTS_COMMANDS: dict[str, Callable[[Snapledger], Any]] = {
    "snapshot": lambda b: b.snapshot("web", "s3"),
    "snapshot --dry-run": lambda b: b.snapshot("web", "s3", dry_run=True),
    "revert": lambda b: b.revert("web", "s1"),
    "delete": lambda b: b.delete("web", "s1"),
    "delete --dry-run": lambda b: b.delete("web", "s1", dry_run=True),
    "gc web": lambda b: b.gc("web"),
    "swap-disk": lambda b: b.swap_disk("web", "vda", B_DISK),
    "recover web": lambda b: b.recover("web"),
    "recover web --pivoted": lambda b: b.recover("web", pivoted=True),
    "reconcile": lambda b: b.reconcile("web"),
    "reconcile --dry-run": lambda b: b.reconcile("web", dry_run=True),
    "retire": lambda b: b.retire("web"),
    "verify web": lambda b: b.verify("web"),
}


@pytest.mark.parametrize("command", OTHER_HOSTS_COMMANDS)
def test_another_hosts_vm_is_refused_naming_its_home_and_nothing_is_recorded(command: str) -> None:
    storage, a, b = two_hosts()
    before = b.last_position()
    files = copy.deepcopy(storage.files)
    with pytest.raises(HomeElsewhere, match="lives on host 'hosta'") as refused:
        OTHER_HOSTS_COMMANDS[command](b)
    assert refused.value.exit_code == 4
    assert b.last_position() == before
    assert storage.files == files  # not a file made, changed or looked at with a time moved


def test_sweeps_without_a_vm_stay_home() -> None:
    """hosta's VM has an operation a crash left open and an image nothing needs: hostb's
    recover, gc and verify leave it alone and record nothing for it; hosta's own finish it."""
    storage, a, b = two_hosts()
    storage.inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        a.snapshot("web", "s3")
    a = ledger_service(a.app, storage, host="hosta")  # a new process of hosta
    before = [p for _, p in b.app.events_after(0)]
    assert b.recover() == []
    assert b.gc() == []
    assert b.verify() == []  # hosta's unfinished operation is hosta's to report
    assert [p for _, p in b.app.events_after(0)] == before
    assert a.verify() != []  # hosta sees its own unfinished operation
    assert a.recover() != []
    assert a.vm("web").operation is None


def legacy_ledger(recorded_on: str) -> tuple[SimulatedStorage, LedgerApplication]:
    """A ledger whose VM `web` was adopted by code from before homes: its `Adopted` event stores
    no `home`, and its chain record names the host `recorded_on`."""
    storage = SimulatedStorage()
    storage.make_image(A_DISK, VSIZE, {0: 0x10})
    new = LedgerApplication("memory:")
    ledger_service(new, storage, host="made-now").adopt("web", {"vda": A_DISK})
    (adopted,) = new.recorder.select_events(vm_id("web"))
    state = json.loads(adopted.state)
    del state["home"]  # as the code before homes stored it
    legacy = LedgerApplication("memory:")
    legacy.recorder.insert_events(
        [StoredEvent(adopted.originator_id, 1, adopted.topic, json.dumps(state).encode())],
        recorded_by=RecordedBy("ann", recorded_on, "0.1"),
    )
    return storage, legacy


def test_an_adopted_event_stored_before_homes_gets_the_host_its_chain_record_names() -> None:
    """Existing ledgers keep working: an `Adopted` stored without `home` belongs to the host
    that recorded it, as every reader (a VM loaded, the ledger folded) sees it."""
    storage, legacy = legacy_ledger("old-host")
    b = ledger_service(legacy, storage, host="other")
    assert b.vm("web").home == "old-host"
    assert b.refresh().vms["web"].home == "old-host"
    with pytest.raises(HomeElsewhere):
        b.snapshot("web", "s1")
    ledger_service(legacy, storage, host="old-host").snapshot("web", "s1")


def test_a_vm_recorded_without_any_host_is_anyones() -> None:
    """A VM adopted through the library without a recording context, before homes, names no
    host (`unknown`): it is refused to no one, as before hosts existed."""
    storage, legacy = legacy_ledger(UNKNOWN_HOST)
    ledger_service(legacy, storage, host="somewhere").snapshot("web", "s1")
    ledger_service(legacy, storage, host="elsewhere").snapshot("web", "s2")
    assert ledger_service(legacy, storage, host="elsewhere").vm("web").lives_on("anyone")


def test_a_service_made_through_the_library_acts_as_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNAPLEDGER_HOST", raising=False)
    storage = SimulatedStorage()
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    assert ledger.host == socket.gethostname()
    recorded = LedgerApplication("memory:", recorded_by=RecordedBy("ann", "hv7", "0.1"))
    assert ledger_service(recorded, storage).host == "hv7"


def test_a_replayed_history_acts_for_every_host() -> None:
    """`replay` inspects a history taken elsewhere: its dry runs are not refused for being
    another host's VMs (it reads recorded facts, no disks)."""
    storage, a, _ = two_hosts()
    replayed = ledger_service(a.app, storage, every_host=True)
    assert replayed.host is None
    assert replayed.delete("web", "s1", dry_run=True).steps
    assert replayed.home_vms() == ["db", "web"]


@pytest.mark.parametrize("name", ["web01", "host-a.example.com", "h_1", "a" * 63 + "." + "b" * 63])
def test_host_names_as_hostname_gives_them(name: str) -> None:
    assert check_host(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a..b", ".a", "a b", "a/b", "é", "unknown", "UNKNOWN", "Unknown", "a" * 254])
def test_what_is_no_host_name_is_bad_input(name: str) -> None:
    with pytest.raises(BadName):
        check_host(name)


def test_the_host_comes_from_the_option_then_the_environment_then_the_hostname(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNAPLEDGER_HOST", "from-env")
    assert this_host("given") == "given"
    assert this_host() == "from-env"
    assert recording_context(host="given").host == "given"
    monkeypatch.delenv("SNAPLEDGER_HOST")
    assert this_host() == socket.gethostname()
    with pytest.raises(BadName, match="--host needs a host name"):  # said empty: not the hostname
        this_host("")


@pytest.mark.parametrize("uri", ["qemu+ssh://root@elsewhere/system", "qemu+tcp://10.0.0.9/system"])
def test_a_libvirt_uri_of_another_machine_is_refused(uri: str) -> None:
    with pytest.raises(BadInput, match="another machine"):
        refuse_remote(uri)


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu+unix:///session", "qemu+tcp://localhost/system", "test:///fake"])
def test_a_libvirt_uri_of_this_machine_is_taken(uri: str) -> None:
    refuse_remote(uri)


def test_a_libvirt_domain_that_runs_here_while_its_vm_lives_elsewhere_is_offered_as_a_move() -> None:
    """A live migration libvirt did (the domain now runs on this host): the refusal says how to
    record the move, and nothing is moved or recorded."""
    storage = SimulatedStorage()
    storage.make_image(A_DISK, VSIZE, {0: 0x10})
    fake = FakeLibvirt(storage)
    fake.add("web", {"vda": A_DISK}, running=True, persistent=True)
    app = LedgerApplication("memory:")
    a = ledger_service(app, storage, host="hosta", hypervisor=LibvirtHypervisor(lambda _uri: fake))
    assert a.hypervisor is not None
    adopt_libvirt(a, a.hypervisor, "web", fake.uri)
    b = ledger_service(app, storage, host="hostb", hypervisor=LibvirtHypervisor(lambda _uri: fake))
    before = b.last_position()
    with pytest.raises(HomeElsewhere, match="runs on this host now") as refused:
        b.snapshot("web", "s1")
    assert "snapledger move web --to hostb" in str(refused.value)
    assert b.last_position() == before and b.vm("web").home == "hosta"
    fake.domains["web"].running = False  # not here: a plain refusal
    with pytest.raises(HomeElsewhere) as plain:
        b.snapshot("web", "s1")
    assert "move" not in str(plain.value)
