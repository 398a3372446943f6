"""The libvirt adapter against an in-memory libvirt (tests/libvirt_fake.py): plan shaping, live
merges routed to block jobs, job failures, libvirtd going away mid-job and `recover`, drift, and
adopting virsh-made history. The real thing is in tests/system/test_libvirt.py."""

from __future__ import annotations

import pytest
from ledger_fakes import LosesEveryRace
from libvirt_fake import FakeLibvirt, JobLockedStorage, virsh_snapshot_xml

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.libvirt.hypervisor import (
    TEST_JOB_BANDWIDTH_ENV,
    LibvirtHypervisor,
    job_bandwidth_from_env,
)
from snapledger.adapters.libvirt.shaping import shape_plan
from snapledger.adapters.libvirt.xml import snapshot_request_xml, with_sources
from snapledger.adapters.service.adopt_libvirt import adopt_libvirt
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import (
    BadInput,
    BranchPointRefused,
    ConcurrentUpdate,
    DriftFound,
    OperationInProgress,
    Refused,
    StorageError,
)
from snapledger.domain.steps import DeleteFile, Plan, SetActive, SwitchDisks

DOM = "web"
BASE = "/images/web.qcow2"
VSIZE = 16 * CLUSTER


def make(*, running: bool = True, persistent: bool = True, storage: SimulatedStorage | None = None,
         job_bandwidth: int = 0) -> tuple[SimulatedStorage, FakeLibvirt, Snapledger]:
    storage = storage or SimulatedStorage()
    storage.make_image(BASE, VSIZE, {0: 0x01})
    fake = FakeLibvirt(storage)
    fake.add(DOM, {"vda": BASE}, running=running, persistent=persistent)
    hypervisor = LibvirtHypervisor(lambda uri: fake, sleep=lambda _s: None, job_bandwidth=job_bandwidth)
    ledger = ledger_service(LedgerApplication("memory:"), storage, hypervisor=hypervisor)
    adopt_libvirt(ledger, hypervisor, DOM, fake.uri)
    return storage, fake, ledger


def guest_write(storage: SimulatedStorage, fake: FakeLibvirt, cluster: int, pattern: int) -> None:
    storage.write(fake.domains[DOM].live["vda"], cluster, pattern)


def actions(plan: object) -> list[str]:
    return [s.action for s in plan.steps]  # type: ignore[attr-defined]


def test_adopt_binds_the_vm_and_records_the_definition() -> None:
    storage, fake, ledger = make()
    vm = ledger.vm(DOM)
    assert vm.libvirt == {"uri": fake.uri, "domain": DOM}
    assert vm.disks == {"vda": BASE}
    assert vm.domain_xml is not None and "<domain" in vm.domain_xml
    assert ledger.verify(DOM) == []


def test_adopt_leaves_other_disks_alone_and_refuses_a_domain_without_qcow2() -> None:
    storage = SimulatedStorage()
    storage.make_image(BASE, VSIZE)
    fake = FakeLibvirt(storage)
    extra = ("<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
             "<source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/></disk>"
             "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
             "<source protocol='rbd' name='pool/img'/><target dev='vdc' bus='virtio'/></disk>")
    fake.add(DOM, {"vda": BASE}, extra_disks=extra)
    fake.add("nothing", {}, extra_disks=extra)
    hypervisor = LibvirtHypervisor(lambda uri: fake, sleep=lambda _s: None)
    ledger = ledger_service(LedgerApplication("memory:"), storage, hypervisor=hypervisor)
    report = adopt_libvirt(ledger, hypervisor, DOM, fake.uri)
    assert report.disks == {"vda": BASE}
    assert [r.split(" ")[0] for r in report.left_alone] == ["vdb", "vdc"]
    with pytest.raises(BadInput, match="no file-backed qcow2 disk"):
        adopt_libvirt(ledger, hypervisor, "nothing", fake.uri)
    with pytest.raises(BadInput, match="no libvirt domain"):
        adopt_libvirt(ledger, hypervisor, "missing", fake.uri)
    # the snapshot leaves the other disks out
    ledger.snapshot(DOM, "s1")
    assert ledger.vm(DOM).disks == {"vda": "/images/web.s1"}


def test_live_snapshot_is_one_switch_of_every_disk_before_the_ledger_moves() -> None:
    storage, fake, ledger = make()
    plan = ledger.snapshot(DOM, "s1")
    assert actions(plan) == ["create-overlay", "switch-disks", "set-active"]
    assert fake.domains[DOM].live == {"vda": "/images/web.s1"}
    snap = ledger.vm(DOM).snapshot("s1")
    assert snap.disks == {"vda": BASE}
    assert snap.domain_xml is not None and "<domain" in snap.domain_xml
    assert fake.snapshots.get(DOM, []) == []  # no libvirt metadata


def test_a_failed_switch_rolls_the_snapshot_back() -> None:
    storage, fake, ledger = make()
    fake.down_after = 4  # libvirt goes away right at the switch
    with pytest.raises(StorageError):
        ledger.snapshot(DOM, "s1")
    fake.down = False
    vm = ledger.vm(DOM)
    assert vm.operation is None and vm.disks == {"vda": BASE}
    assert not storage.exists("/images/web.s1")
    assert fake.domains[DOM].live == {"vda": BASE}


def test_a_crash_after_the_switch_is_finished_by_recover() -> None:
    storage, fake, ledger = make()
    fake.crash_after = "snapshotCreateXML"
    with pytest.raises(SimulatedCrash):
        ledger.snapshot(DOM, "s1")
    assert ledger.vm(DOM).operation is not None  # libvirt switched, the ledger did not yet
    assert fake.domains[DOM].live == {"vda": "/images/web.s1"}
    assert ledger.recover(DOM)
    assert ledger.vm(DOM).disks == {"vda": "/images/web.s1"}
    assert fake.calls.count("snapshotCreateXML") == 1  # seen as done, not done twice
    assert ledger.verify(DOM) == []


def test_shut_off_snapshot_redefines_the_domain() -> None:
    storage, fake, ledger = make(running=False)
    plan = ledger.snapshot(DOM, "s1")
    assert actions(plan) == ["create-overlay", "set-active", "define-domain"]
    assert fake.domains[DOM].sources == {"vda": "/images/web.s1"}
    assert ledger.verify(DOM) == []


def test_revert_running_stops_redefines_and_starts() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 1, 0x22)
    plan = ledger.revert(DOM, "s1", running=True)
    assert actions(plan) == ["stop-domain", "create-overlay", "set-active", "define-domain",
                             "delete-file", "start-domain"]
    assert fake.domains[DOM].running and fake.domains[DOM].live == {"vda": "/images/web.s1-1"}
    assert not storage.exists("/images/web.s1")
    assert storage.read_all("/images/web.s1-1") == {0: 0x01}
    # not running afterwards without --running
    ledger.revert(DOM, "s1")
    assert not fake.domains[DOM].running
    assert fake.domains[DOM].sources == {"vda": "/images/web.s1-2"}
    assert ledger.verify(DOM) == []


def test_transient_revert_needs_running_and_creates_the_domain_again() -> None:
    storage, fake, ledger = make(persistent=False)
    ledger.snapshot(DOM, "s1")
    with pytest.raises(BadInput, match="transient"):
        ledger.revert(DOM, "s1")
    ledger.revert(DOM, "s1", running=True)
    assert fake.domains[DOM].running and not fake.domains[DOM].persistent
    assert fake.domains[DOM].live == {"vda": "/images/web.s1-1"}


@pytest.mark.parametrize(
    "persistent, dies_after",
    [
        (True, "destroy"), (True, "defineXML"), (True, "create"),
        # a transient domain is neither defined nor started by name: created from the XML
        (False, "destroy"), (False, "createXML"),
    ],
)
def test_a_revert_running_finished_by_recover_starts_the_domain(
    persistent: bool, dies_after: str
) -> None:
    """`--running` is part of the recorded plan (its last step), so a process that dies at any
    point of the revert leaves `recover` to start the domain too, exactly once."""
    storage, fake, ledger = make(persistent=persistent)
    ledger.snapshot(DOM, "s1")
    fake.crash_after = dies_after
    with pytest.raises(SimulatedCrash):
        ledger.revert(DOM, "s1", running=True)
    assert ledger.vm(DOM).operation is not None
    starts = fake.calls.count("create") + fake.calls.count("createXML")
    finished = ledger.recover(DOM)
    assert finished and f"domain {DOM} is running" in finished[0]
    assert fake.domains[DOM].running and fake.domains[DOM].live == {"vda": "/images/web.s1-1"}
    assert fake.calls.count("create") + fake.calls.count("createXML") == (
        starts if dies_after in ("create", "createXML") else starts + 1
    )
    assert ledger.vm(DOM).operation is None and ledger.verify(DOM) == []


def test_a_domain_that_does_not_start_leaves_the_revert_done_and_recorded() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    fake.refuse_start = "internal error: cannot allocate memory"
    with pytest.raises(StorageError, match="revert is done and recorded, but domain web did not "
                                           "start: internal error: cannot allocate memory"):
        ledger.revert(DOM, "s1", running=True)
    assert ledger.vm(DOM).operation is None and ledger.vm(DOM).current == "s1"
    assert not fake.domains[DOM].running
    assert fake.domains[DOM].sources == {"vda": "/images/web.s1-1"}
    assert ledger.verify(DOM) == []
    fake.refuse_start = None
    ledger.revert(DOM, "s1", running=True)  # the VM is usable: nothing is left open
    assert fake.domains[DOM].running


def test_a_delete_finished_by_recover_forgets_libvirts_metadata_too() -> None:
    storage, fake, hypervisor, ledger = _virsh_world()
    adopt_libvirt(ledger, hypervisor, DOM, fake.uri, keep_metadata=True)
    storage.inject(crash_at=1)  # the process dies at the first change qemu-img would make
    with pytest.raises(SimulatedCrash):
        ledger.delete(DOM, "s1")
    assert len(fake.snapshots[DOM]) == 2
    finished = ledger.recover(DOM)
    assert "metadata of snapshot s1 was removed" in finished[0]
    assert len(fake.snapshots[DOM]) == 1 and "<name>s2</name>" in fake.snapshots[DOM][0]


def test_live_active_commit_pivots_and_deletes_the_old_top() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 2, 0x22)
    plan = ledger.delete(DOM, "s1")
    assert actions(plan)[0] == "commit"
    assert "pivot" in fake.calls and "blockCommit" in fake.calls
    assert fake.domains[DOM].live == {"vda": BASE}
    assert not storage.exists("/images/web.s1")
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}
    assert ledger.verify(DOM) == []


def test_a_pull_into_a_running_backing_file_is_refused_or_becomes_a_commit() -> None:
    storage, fake, ledger = make()
    for n in (1, 2, 3):
        ledger.snapshot(DOM, f"s{n}")
        guest_write(storage, fake, n, 0x10 * n)
    with pytest.raises(Refused, match="libvirt pulls only into the active image"):
        ledger.delete(DOM, "s2", strategy="pull")
    plan = ledger.delete(DOM, "s2")  # auto: a live commit of web.s2 into web.s1
    assert actions(plan)[:2] == ["commit", "rebase-unsafe"]
    assert fake.chain(DOM, "vda") == ["/images/web.s3", "/images/web.s1", BASE]
    assert storage.read_all("/images/web.s3") == {0: 0x01, 1: 0x10, 2: 0x20, 3: 0x30}
    assert ledger.verify(DOM) == []


def test_a_failed_block_job_deletes_nothing_and_records_the_failure() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 2, 0x22)
    fake.fail_jobs = True
    with pytest.raises(StorageError, match="did not finish"):
        ledger.delete(DOM, "s1")
    vm = ledger.vm(DOM)
    assert vm.operation is not None and vm.operation.failure is not None
    assert storage.exists("/images/web.s1") and fake.domains[DOM].live == {"vda": "/images/web.s1"}
    with pytest.raises(OperationInProgress):
        ledger.snapshot(DOM, "s2")
    fake.fail_jobs = False
    ledger.recover(DOM)
    assert ledger.vm(DOM).operation is None
    assert fake.domains[DOM].live == {"vda": BASE}
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}


@pytest.mark.parametrize(
    "down_on", [("blockCommit", 1), ("blockJobInfo", 3), ("pivot", 1)],
    ids=["before-the-job", "mid-job", "at-the-pivot"],
)
def test_libvirtd_going_away_mid_job_is_reconciled_by_recover(down_on: tuple[str, int]) -> None:
    storage, fake, ledger = make()
    for n in (1, 2):
        ledger.snapshot(DOM, f"s{n}")
        guest_write(storage, fake, n, 0x10 * n)
    fake.down_on = down_on
    with pytest.raises(StorageError):
        ledger.delete(DOM, "s2", strategy="commit")  # commit web.s2 (active) into web.s1
    fake.down = False  # libvirtd is back; the job went on (or had not started)
    assert ledger.vm(DOM).operation is not None
    ledger.recover(DOM)
    assert ledger.vm(DOM).operation is None
    assert fake.domains[DOM].live == {"vda": "/images/web.s1"}
    assert not storage.exists("/images/web.s2")
    assert storage.read_all("/images/web.s1") == {0: 0x01, 1: 0x10, 2: 0x20}
    assert ledger.verify(DOM) == []


def test_recover_waits_for_a_non_active_commit_still_running_before_checking_its_files() -> None:
    """The process died (here: libvirtd went away) while a non-active commit ran; QEMU's job runs
    on and keeps web.s2 locked against reads. recover waits for the job, then takes the commit as
    done (found on a real libvirt: it used to stop at the lock, exit 4, blaming 'another
    process' for snapledger's own job)."""
    storage = JobLockedStorage()
    storage, fake, ledger = make(storage=storage)
    storage.libvirt = fake
    for n in (1, 2, 3):
        ledger.snapshot(DOM, f"s{n}")
        guest_write(storage, fake, n, 0x10 * n)
    fake.down_on = ("blockJobInfo", 3)  # once the job runs (1: the check for others' jobs)
    with pytest.raises(StorageError):
        ledger.delete(DOM, "s2")  # commit web.s2 into web.s1 while web.s3 runs on them
    fake.down = False
    assert fake.jobs  # the job runs on
    ledger.recover(DOM)
    assert ledger.vm(DOM).operation is None
    assert fake.calls.count("blockCommit") == 1  # waited for, never started again
    assert fake.chain(DOM, "vda") == ["/images/web.s3", "/images/web.s1", BASE]
    assert not storage.exists("/images/web.s2")
    assert storage.read_all("/images/web.s1") == {0: 0x01, 1: 0x10, 2: 0x20}
    assert ledger.verify(DOM) == []


def test_the_block_job_bandwidth_knob_is_off_unless_asked_for() -> None:
    assert job_bandwidth_from_env({}) == 0
    assert job_bandwidth_from_env({TEST_JOB_BANDWIDTH_ENV: ""}) == 0
    assert job_bandwidth_from_env({TEST_JOB_BANDWIDTH_ENV: "1048576"}) == 1 << 20
    with pytest.raises(BadInput):
        job_bandwidth_from_env({TEST_JOB_BANDWIDTH_ENV: "1M"})
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    ledger.delete(DOM, "s1")
    storage, fake2, ledger = make(job_bandwidth=1 << 20)
    ledger.snapshot(DOM, "s1")
    ledger.delete(DOM, "s1")
    assert fake.bandwidths == [0] and fake2.bandwidths == [1 << 20]


def died_after_the_pivot(
    persistent: bool = True,
) -> tuple[SimulatedStorage, FakeLibvirt, Snapledger]:
    """s1's live delete (an active commit) pivoted, then the process died before recording it."""
    storage, fake, ledger = make(persistent=persistent)
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 2, 0x22)
    fake.crash_after = "pivot"
    with pytest.raises(SimulatedCrash):
        ledger.delete(DOM, "s1")
    return storage, fake, ledger


def test_recover_after_a_pivot_never_commits_again() -> None:
    storage, fake, ledger = died_after_the_pivot()
    assert fake.domains[DOM].live == {"vda": BASE}  # pivoted: the guest writes into the base
    storage.write(BASE, 2, 0x99)
    ledger.recover(DOM)  # qemu-img must not commit the old top over the guest's new data
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x99}
    assert not storage.exists("/images/web.s1")
    assert ledger.verify(DOM) == []


def test_a_transient_domain_gone_after_a_possible_pivot_is_not_committed_again() -> None:
    """Pivot, crash, the guest writes into the base, the transient domain is destroyed (so it is
    gone): whether the pivot happened can't be told, so recover refuses rather than commit the
    old top over the guest's writes; once the domain runs again on the base, recover finishes."""
    storage, fake, ledger = died_after_the_pivot(persistent=False)
    storage.write(BASE, 2, 0x99)
    fake.destroy(DOM)
    assert DOM not in fake.domains
    with pytest.raises(Refused, match="can't tell whether it did"):
        ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x99}  # nothing written over the guest's data
    fake.create(f"<domain><name>{DOM}</name><devices><disk type='file' device='disk'>"
                f"<driver name='qemu' type='qcow2'/><source file='{BASE}'/><target dev='vda'/>"
                "</disk></devices></domain>")
    ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x99}
    assert not storage.exists("/images/web.s1")
    assert ledger.verify(DOM) == []


def test_recover_after_a_pivot_then_a_shutdown_never_commits_again() -> None:
    """The pivot, a crash, the guest writes into the base, the domain is shut off, then recover:
    the persistent definition (rewritten at the pivot) says the commit was done. The domain ran
    when the delete began, so recover starts it again, on the base."""
    storage, fake, ledger = died_after_the_pivot()
    storage.write(BASE, 2, 0x99)  # the guest, after the pivot
    fake.destroy(DOM)
    notes = ledger.recover(DOM)
    assert "started again on vda=/images/web.qcow2" in notes[0]
    assert fake.domains[DOM].running and fake.domains[DOM].live == {"vda": BASE}
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x99}
    assert fake.domains[DOM].sources == {"vda": BASE}
    assert not storage.exists("/images/web.s1")
    assert ledger.verify(DOM) == []


def test_a_live_active_commit_redefines_the_domain_so_a_shutdown_before_the_pivot_is_recovered() -> None:
    """The domain is shut off while the active commit runs (QEMU cancels the job, no pivot):
    recover commits with qemu-img and must redefine the domain on the base before deleting the
    old top, which the persistent definition still names (found on a real libvirt 9.0)."""
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 2, 0x22)
    fake.down_on = ("blockJobInfo", 3)  # snapledger loses libvirt once the job runs
    with pytest.raises(StorageError):
        ledger.delete(DOM, "s1")
    plan = ledger.vm(DOM).operation
    assert plan is not None
    assert [s.action for s in plan.steps] == ["commit", "set-active", "define-domain", "delete-file"]
    fake.down = False
    guest_write(storage, fake, 3, 0x33)  # into web.s1, still the active image
    fake.destroy(DOM)  # the job is cancelled
    assert fake.domains[DOM].sources == {"vda": "/images/web.s1"}
    ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22, 3: 0x33}
    assert fake.domains[DOM].sources == {"vda": BASE}  # not the deleted web.s1
    assert not storage.exists("/images/web.s1")
    assert ledger.verify(DOM) == []
    fake.start(DOM)
    assert fake.chain(DOM, "vda") == [BASE]


def test_branch_point_pull_while_running() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 1, 0x11)
    ledger.snapshot(DOM, "s2")
    guest_write(storage, fake, 2, 0x22)
    ledger.snapshot(DOM, "s3")
    ledger.revert(DOM, "s2", running=True)
    guest_write(storage, fake, 3, 0x33)
    with pytest.raises(BranchPointRefused):
        ledger.delete(DOM, "s2")
    ledger.delete(DOM, "s2", branches="pull")
    assert fake.chain(DOM, "vda") == ["/images/web.s2-1", BASE]
    assert not storage.exists("/images/web.s1")
    assert storage.read_all("/images/web.s2-1") == {0: 0x01, 1: 0x11, 3: 0x33}
    assert storage.read_all("/images/web.s2") == {0: 0x01, 1: 0x11, 2: 0x22}


def test_a_disk_changed_behind_our_back_is_drift_with_a_hint() -> None:
    storage, fake, ledger = make(running=False)
    storage.make_image("/images/other.qcow2", VSIZE)
    fake.domains[DOM].sources["vda"] = "/images/other.qcow2"
    findings = ledger.verify(DOM)
    assert len(findings) == 1 and "swap-disk web vda /images/other.qcow2" in findings[0]
    with pytest.raises(DriftFound):
        ledger.snapshot(DOM, "s1")
    ledger.swap_disk(DOM, "vda", "/images/other.qcow2")
    assert ledger.verify(DOM) == []
    storage.make_image("/images/mine.qcow2", VSIZE)
    ledger.swap_disk(DOM, "vda", "/images/mine.qcow2")  # shut off: libvirt follows
    assert fake.domains[DOM].sources == {"vda": "/images/mine.qcow2"}
    fake.start(DOM)
    with pytest.raises(BadInput, match="running"):
        ledger.swap_disk(DOM, "vda", "/images/other.qcow2")


def test_a_refused_swap_leaves_libvirts_definition_alone() -> None:
    storage, fake, ledger = make(running=False)
    ledger.snapshot(DOM, "s1")
    frozen = ledger.vm(DOM).snapshot("s1").disks["vda"]
    before = dict(fake.domains[DOM].sources)
    with pytest.raises(Refused, match="holds snapshot"):
        ledger.swap_disk(DOM, "vda", frozen)  # booting from it would change the snapshot
    assert fake.domains[DOM].sources == before
    storage.make_image("/images/mine.qcow2", VSIZE)

    racing = ledger_service(
        LosesEveryRace(ledger.app), storage, hypervisor=ledger.hypervisor,  # type: ignore[arg-type]
        projection=ledger.projection,
    )
    with pytest.raises(ConcurrentUpdate):  # the save fails after libvirt was redefined...
        racing.swap_disk(DOM, "vda", "/images/mine.qcow2")
    assert fake.domains[DOM].sources == before  # ...so the definition is put back
    assert ledger.vm(DOM).disks == before


def _virsh_world() -> tuple[SimulatedStorage, FakeLibvirt, LibvirtHypervisor, Snapledger]:
    """A domain with a virsh-made history, not adopted yet, and an empty ledger."""
    storage = SimulatedStorage()
    storage.make_image(BASE, VSIZE, {0: 0x01})
    fake = FakeLibvirt(storage)
    fake.add(DOM, {"vda": BASE})
    _virsh_history(storage, fake)
    hypervisor = LibvirtHypervisor(lambda uri: fake, sleep=lambda _s: None)
    return storage, fake, hypervisor, ledger_service(LedgerApplication("memory:"), storage, hypervisor=hypervisor)


def _virsh_history(storage: SimulatedStorage, fake: FakeLibvirt) -> None:
    """What `virsh snapshot-create-as --disk-only` twice leaves: web.qcow2 <- web.s1 <- web.s2."""
    storage.make_image("/images/web.s1", VSIZE, {1: 0x11}, backing=BASE)
    storage.make_image("/images/web.s2", VSIZE, {2: 0x22}, backing="/images/web.s1")
    fake.domains[DOM].live["vda"] = fake.domains[DOM].sources["vda"] = "/images/web.s2"
    fake.snapshots[DOM] = [
        virsh_snapshot_xml("s2", "s1", DOM, {"vda": "/images/web.s2"}, {"vda": "/images/web.s1"}, 200),
        virsh_snapshot_xml("s1", None, DOM, {"vda": "/images/web.s1"}, {"vda": BASE}, 100, "first"),
    ]


def test_adopting_virsh_history_imports_it_and_drops_libvirts_metadata() -> None:
    storage, fake, hypervisor, ledger = _virsh_world()
    report = adopt_libvirt(ledger, hypervisor, DOM, fake.uri)
    assert report.imported == ["s1", "s2"]
    assert fake.snapshots[DOM] == []  # virsh can't act on it any more
    vm = ledger.vm(DOM)
    assert vm.current == "s2"
    assert vm.snapshot("s1").disks == {"vda": BASE} and vm.snapshot("s1").description == "first"
    assert vm.snapshot("s2").parent == "s1" and vm.snapshot("s2").disks == {"vda": "/images/web.s1"}
    origins = {p: r.origin.value for p, r in vm.images.items()}
    assert origins == {BASE: "adopted", "/images/web.s1": "managed", "/images/web.s2": "managed"}
    # s2's frozen image and its only child are both managed: either merge is allowed
    plan = ledger.delete(DOM, "s2", strategy="pull")
    assert actions(plan)[0] == "pull"
    assert fake.chain(DOM, "vda") == ["/images/web.s2", BASE]
    assert ledger.verify(DOM) == []


def test_adopting_virsh_history_keeping_metadata_removes_it_per_deleted_snapshot() -> None:
    storage, fake, hypervisor, ledger = _virsh_world()
    adopt_libvirt(ledger, hypervisor, DOM, fake.uri, keep_metadata=True)
    assert len(fake.snapshots[DOM]) == 2
    plan = ledger.delete(DOM, "s1")  # non-active commit of web.s1 into the adopted disk
    assert any("metadata of snapshot s1 was removed" in n for n in plan.notes)
    assert len(fake.snapshots[DOM]) == 1 and "<name>s2</name>" in fake.snapshots[DOM][0]


def test_internal_snapshots_are_refused_at_adopt() -> None:
    storage = SimulatedStorage()
    storage.make_image(BASE, VSIZE)
    fake = FakeLibvirt(storage)
    fake.add(DOM, {"vda": BASE})
    fake.snapshots[DOM] = [
        "<domainsnapshot><name>int</name><state>running</state><memory snapshot='internal'/>"
        "<disks><disk name='vda' snapshot='internal'/></disks></domainsnapshot>"
    ]
    hypervisor = LibvirtHypervisor(lambda uri: fake, sleep=lambda _s: None)
    ledger = ledger_service(LedgerApplication("memory:"), storage, hypervisor=hypervisor)
    with pytest.raises(Refused, match="internal"):
        adopt_libvirt(ledger, hypervisor, DOM, fake.uri)
    assert DOM not in ledger.refresh().vms


def test_libvirt_xml_helpers() -> None:
    xml = ("<domain type='qemu' id='4'><name>x</name><devices><disk type='file' device='disk'>"
           "<driver name='qemu' type='qcow2'/><source file='/a/b.s1' index='2'/>"
           "<backingStore type='file'><source file='/a/b.qcow2'/></backingStore>"
           "<target dev='vda'/><alias name='virtio-disk0'/></disk></devices></domain>")
    out = with_sources(xml, {"vda": "/a/b.s1-1"})
    assert "backingStore" not in out and "alias" not in out and "id=" not in out
    assert "/a/b.s1-1" in out
    with pytest.raises(BadInput):
        with_sources(xml, {"vdz": "/a/x"})
    request = snapshot_request_xml(["vda", "hdc"], {"vda": "/a/o"})
    assert "snapshot=\"no\"" in request or "snapshot='no'" in request
    with pytest.raises(BadInput, match="DOCTYPE"):
        with_sources("<!DOCTYPE x [<!ENTITY a 'b'>]><domain/>", {})


def test_a_ledger_without_the_libvirt_adapter_plans_but_never_acts() -> None:
    """An exported history replayed elsewhere has no libvirt: dry runs plan, nothing runs."""
    import io

    from snapledger.adapters.eventstore.export import (
        RecordedFactsStorage,
        export_jsonl,
        read_export,
        replay_store,
    )

    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    out = io.StringIO()
    export_jsonl(ledger.app, DOM, out)
    history = read_export(out.getvalue().splitlines(), "export")
    facts = RecordedFactsStorage()
    replayed = ledger_service(replay_store(history), facts)
    facts.view = replayed.view
    vm = replayed.vm(DOM)
    assert vm.libvirt == {"uri": fake.uri, "domain": DOM} and "s1" in vm.snapshots
    plan = replayed.delete(DOM, "s1", dry_run=True)
    assert actions(plan)[0] == "commit"
    offline = ledger_service(ledger.app, storage)  # the same store, no libvirt adapter
    with pytest.raises(BadInput, match="libvirt"):
        offline.delete(DOM, "s1")
    assert ledger.vm(DOM).operation is None


def test_a_vm_whose_domain_was_undefined_can_be_retired() -> None:
    """The domain is gone from libvirt: verify says so forever, until the VM is retired, which
    asks nothing of libvirt; the images stay, and the name can be adopted again."""
    storage, fake, ledger = make(running=False)
    ledger.snapshot(DOM, "s1")
    del fake.domains[DOM]
    assert any("libvirt" in f for f in ledger.verify(DOM))
    files = dict(storage.files)
    left = ledger.retire(DOM)
    assert left == ["/images/web.s1"] and storage.files == files
    assert ledger.verify() == [] and ledger.verify(DOM) == []
    assert DOM not in ledger.view.live_vms() and ledger.recover() == [] and ledger.gc() == []
    fake.add(DOM, {"vda": "/images/web.s1"}, running=False)
    adopt_libvirt(ledger, ledger.hypervisor, DOM, fake.uri)  # type: ignore[arg-type]
    assert ledger.vm(DOM).generation == 2 and ledger.vm(DOM).snapshots == {}
    assert ledger.verify(DOM) == []


def test_shaping_is_pure_and_reads_the_definition_only_when_a_step_needs_it() -> None:
    """adapters/libvirt/shaping.py is told the domain's state; no libvirt is asked."""
    _, _, ledger = make()
    vm = ledger.vm(DOM)
    reads: list[str] = []

    def definition() -> str:
        reads.append("read")
        return vm.domain_xml or ""

    snapshot = Plan("snapshot", (SetActive("vda", "/images/web.s1"),))
    live = shape_plan(vm, snapshot, DOM, running=True, persistent=True, definition=definition)
    assert actions(live) == ["switch-disks", "set-active"]
    assert live.steps[0] == SwitchDisks(DOM, (("vda", "/images/web.s1"),))
    assert reads == []
    off = shape_plan(vm, snapshot, DOM, running=False, persistent=True, definition=definition)
    assert actions(off) == ["set-active", "define-domain"]
    assert reads == ["read"]
    delete = Plan("delete", (DeleteFile("/images/old"),))
    assert actions(shape_plan(vm, delete, DOM, running=True, persistent=False,
                              definition=definition)) == ["delete-file"]
    with pytest.raises(BadInput, match="transient"):
        shape_plan(vm, Plan("revert", ()), DOM, running=True, persistent=False, definition=definition)
    revert = shape_plan(vm, Plan("revert", ()), DOM, running=True, persistent=False,
                        definition=definition, start=True)
    assert actions(revert) == ["stop-domain", "define-domain", "start-domain"]


def test_the_adapter_made_on_first_use_gets_the_hooks_the_service_sets() -> None:
    """compose.open_ledger gives the service a stand-in that makes the libvirt adapter when it
    is first used; a hook set on the stand-in (the pivot recorder) must be the adapter's."""
    from snapledger.adapters.compose import LibvirtOnFirstUse
    from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor

    def hook(disk: str, base: str) -> None:
        return None

    stand_in = LibvirtOnFirstUse()
    stand_in.on_pivot = hook
    made = stand_in._made()
    assert isinstance(made, LibvirtHypervisor) and made.on_pivot is hook
    stand_in.on_pivot = None
    assert made.on_pivot is None
