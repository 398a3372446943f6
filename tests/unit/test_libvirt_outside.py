"""libvirt's world outside the ledger (issue 10), against the in-memory libvirt: definitions that
follow the disks, `recover` that checks which image a domain runs on before it finishes a live
commit, block jobs that are not ours, domains destroyed mid-job, memory snapshot requests. The
same cases on a real libvirtd are in tests/system/test_libvirt_world.py."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from libvirt_fake import FakeJob, FakeLibvirt
from test_libvirt_adapter import BASE, DOM, actions, guest_write, make

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.host.processes import LocalProcesses
from snapledger.adapters.libvirt.hypervisor import DomainStopped, ForeignBlockJob, WrongImage
from snapledger.adapters.libvirt.xml import disk_sources, domain_disks
from snapledger.adapters.libvirt.xml_input import snapshot_request
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.errors import BadInput, StorageError
from snapledger.testing.checks import changes

S1 = "/images/web.s1"


def recorded_sources(ledger: Snapledger) -> dict[str, str]:
    xml = ledger.vm(DOM).domain_xml
    assert xml is not None
    return disk_sources(xml)


def interrupted_live_delete(persistent: bool) -> tuple[SimulatedStorage, FakeLibvirt, Snapledger]:
    """s1 freezes the disk; the guest writes 0x22 into web.s1; s1's live delete (an active commit
    of web.s1 into the disk) loses libvirt while the job runs, before any pivot."""
    storage, fake, ledger = make(persistent=persistent)
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 2, 0x22)
    fake.down_on = ("blockJobInfo", 3)  # 1: the check for others' jobs, 2: before the start
    with pytest.raises(StorageError):
        ledger.delete(DOM, "s1")
    fake.down = False
    assert ledger.vm(DOM).operation is not None
    return storage, fake, ledger


def test_the_recorded_definition_names_the_images_after_every_operation() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    assert recorded_sources(ledger) == {"vda": S1}
    ledger.snapshot(DOM, "s2")
    ledger.delete(DOM, "s2")  # active commit of web.s2 into web.s1, pivot
    assert recorded_sources(ledger) == {"vda": S1}
    fake.destroy(DOM)
    ledger.revert(DOM, "s1")  # offline: a new overlay web.s1-1 over the disk
    assert recorded_sources(ledger) == {"vda": "/images/web.s1-1"}
    assert fake.domains[DOM].sources == {"vda": "/images/web.s1-1"}


def test_an_offline_delete_under_the_active_image_redefines_a_persistent_domain() -> None:
    """No disk changes its active image, but a chain under one does: a definition with explicit
    <backingStore> chains (libvirt writes them at live snapshots) would name a deleted image."""
    storage, fake, ledger = make()
    for name in ("s1", "s2", "s3"):
        ledger.snapshot(DOM, name)
    fake.destroy(DOM)
    plan = ledger.delete(DOM, "s2")
    assert "define-domain" in actions(plan)
    assert actions(plan).index("define-domain") == len(plan.steps) - 1 or "set-active" in actions(plan)
    assert fake.domains[DOM].sources == {"vda": "/images/web.s3"}


def test_a_transient_domain_destroyed_before_the_pivot_is_finished_offline() -> None:
    """No pivot was asked for: the top holds the guest's writes, so it is committed again with
    qemu-img; the domain is gone, and the definition to start it with names the base."""
    storage, fake, ledger = interrupted_live_delete(persistent=False)
    fake.destroy(DOM)
    assert DOM not in fake.domains
    notes = ledger.recover(DOM)
    assert "is gone (transient" in notes[0] and f"vda={BASE}" in notes[0]
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}
    assert not storage.exists(S1)
    assert recorded_sources(ledger) == {"vda": BASE}


def test_recover_refuses_a_domain_started_on_the_base_without_a_pivot_of_ours() -> None:
    """The data loss of issue 10: the transient domain destroyed mid-commit is started again on
    the commit's base (from a stale definition). Finishing then would delete the top, the only
    copy of the guest's writes: refused (exit 3, both images named), nothing changed. Started on
    the image the ledger expects (its recorded definition), recover finishes live."""
    storage, fake, ledger = interrupted_live_delete(persistent=False)
    fake.destroy(DOM)
    stale = f"<domain><name>{DOM}</name><devices><disk type='file' device='disk'>" \
            f"<driver name='qemu' type='qcow2'/><source file='{BASE}'/><target dev='vda'/>" \
            "</disk></devices></domain>"
    fake.create(stale)
    with pytest.raises(WrongImage) as refused:
        ledger.recover(DOM)
    assert refused.value.exit_code == 3
    assert BASE in str(refused.value) and S1 in str(refused.value)
    assert storage.exists(S1) and storage.read_all(S1) == {0: 0x01, 2: 0x22}
    assert ledger.vm(DOM).operation is not None
    fake.destroy(DOM)
    recorded = ledger.vm(DOM).domain_xml
    assert recorded is not None and disk_sources(recorded) == {"vda": S1}
    fake.create(recorded)  # what the refusal says to do
    ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}
    assert fake.domains[DOM].live == {"vda": BASE}
    assert ledger.verify(DOM) == []


def test_a_persistent_domain_destroyed_mid_job_is_started_again_on_the_right_image() -> None:
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    guest_write(storage, fake, 3, 0x33)  # into web.s1, mirrored by the job
    fake.destroy(DOM)  # the job is cancelled, no pivot
    notes = ledger.recover(DOM)
    assert f"started again on vda={BASE}" in notes[0]
    assert fake.domains[DOM].running and fake.domains[DOM].live == {"vda": BASE}
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22, 3: 0x33}
    assert ledger.verify(DOM) == []


def test_a_domain_destroyed_during_a_live_delete_exits_4_and_recover_finishes() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 2, 0x22)
    fake.stop_during_job = True
    with pytest.raises(DomainStopped) as stopped:
        ledger.delete(DOM, "s1")
    assert stopped.value.exit_code == 4 and "recover" in str(stopped.value)
    assert ledger.vm(DOM).operation is not None
    ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}
    assert fake.domains[DOM].live == {"vda": BASE}
    assert ledger.verify(DOM) == []


def test_a_block_job_not_ours_is_a_conflict_and_records_nothing() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    fake.jobs[(DOM, "vda")] = FakeJob("copy", S1, None, steps_left=1000)
    before = ledger.vm(DOM).version
    for attempt in (lambda: ledger.snapshot(DOM, "s2"), lambda: ledger.delete(DOM, "s1")):
        with pytest.raises(ForeignBlockJob) as busy:
            attempt()
        assert busy.value.exit_code == 4 and "virsh blockjob" in str(busy.value)
    assert ledger.vm(DOM).version == before and ledger.vm(DOM).operation is None
    del fake.jobs[(DOM, "vda")]
    ledger.delete(DOM, "s1")
    assert ledger.verify(DOM) == []


def test_a_block_job_not_ours_during_recover_keeps_the_operation_open_with_exit_4() -> None:
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    fake.jobs[(DOM, "vda")] = FakeJob("copy", S1, None, steps_left=1000)
    with pytest.raises(ForeignBlockJob):
        ledger.recover(DOM)
    op = ledger.vm(DOM).operation
    assert op is not None and op.failure is None or "copy" not in str(op.failure)
    del fake.jobs[(DOM, "vda")]
    ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}


def test_a_memory_snapshot_request_is_refused() -> None:
    request = (b"<domainsnapshot><name>m</name><memory snapshot='external' file='/tmp/mem'/>"
               b"</domainsnapshot>")
    with pytest.raises(BadInput, match="memory"):
        snapshot_request(request)
    plain = b"<domainsnapshot><name>d</name><memory snapshot='no'/></domainsnapshot>"
    assert snapshot_request(plain).name == "d"


def test_domain_disks_parse_the_definition_recorded() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    xml = ledger.vm(DOM).domain_xml
    assert xml is not None
    assert [d.source for d in domain_disks(xml)] == [S1]


class RunnersLookDead(LocalProcesses):
    """A second process that takes every runner for dead (as after a pid namespace change)."""

    def running(self, runner: Mapping[str, object] | None, op_id: str) -> bool | None:
        return False


def test_a_delete_finished_by_a_racing_recover_reports_done_not_nothing_was_done() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    guest_write(storage, fake, 2, 0x22)
    other = ledger_service(ledger.app, storage, hypervisor=ledger.hypervisor,
                       runners=RunnersLookDead())
    finished: list[str] = []
    fake.on_job_poll = lambda: finished.extend(other.recover(DOM))
    plan = ledger.delete(DOM, "s1")  # no ConcurrentUpdate: the delete is done
    assert finished and "finished delete" in finished[0]
    assert plan.kind == "delete"
    assert ledger.vm(DOM).operation is None and "s1" not in ledger.vm(DOM).snapshots
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}
    assert ledger.verify(DOM) == []


def test_a_pivot_by_hand_then_a_restart_is_refused_until_vouched_for() -> None:
    """snapledger lost libvirt mid-job; the operator pivoted by hand, the guest wrote into the
    base, the domain was destroyed. No pivot of ours is recorded and the QEMU that ran is gone:
    refused (the same picture as a domain started on the base by hand). `recover --pivoted`
    records the operator's word, and the commit is taken as done."""
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    while (job := fake.block_job(DOM, "vda")) is not None and not job.ready:
        pass
    fake.pivot(DOM, "vda")  # virsh blockjob --pivot
    storage.write(BASE, 3, 0x99)  # the guest, after the pivot
    fake.destroy(DOM)
    with pytest.raises(WrongImage, match="--pivoted"):
        ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22, 3: 0x99}
    with pytest.raises(BadInput, match="no open operation"):
        make()[2].recover(DOM, pivoted=True)
    notes = ledger.recover(DOM, pivoted=True)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22, 3: 0x99}  # not committed again
    assert fake.domains[DOM].live == {"vda": BASE}
    # only vouched for: the top is kept (the user's now), in case the word was wrong
    assert storage.exists(S1) and any(f"{S1} was kept on disk" in n for n in notes)
    assert S1 not in ledger.vm(DOM).images
    assert ledger.verify(DOM) == []
    assert S1 in ledger.unknown_dependants(DOM)[BASE]  # it rests on the disk: the disk stays


def test_a_pivot_by_hand_in_the_same_qemu_is_taken_as_done() -> None:
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    while (job := fake.block_job(DOM, "vda")) is not None and not job.ready:
        pass
    fake.pivot(DOM, "vda")
    storage.write(BASE, 3, 0x99)
    ledger.recover(DOM)  # the domain's id is the one recorded when the delete began
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22, 3: 0x99}
    assert not storage.exists(S1)


def test_recover_refuses_a_domain_started_on_an_image_the_operation_never_leaves_it_on() -> None:
    """A non-active commit cut short; the domain is started again from the definition adopt
    saw (on the disk, below three snapshots): nothing of the delete would be right there."""
    storage, fake, ledger = make()
    for n in (1, 2, 3):
        ledger.snapshot(DOM, f"s{n}")
        guest_write(storage, fake, n, 0x10 * n)
    fake.down_on = ("blockJobInfo", 3)
    with pytest.raises(StorageError):
        ledger.delete(DOM, "s2")  # commit web.s2 into web.s1 under the running web.s3
    fake.down = False
    fake.destroy(DOM)
    fake.jobs.clear()
    fake.domains[DOM].sources = {"vda": BASE}
    fake.start(DOM)
    before = changes(ledger.app)
    with pytest.raises(WrongImage, match="expects /images/web.s3"):
        ledger.recover(DOM)
    assert changes(ledger.app) == before  # nothing recorded but the refusal
    fake.destroy(DOM)
    fake.domains[DOM].sources = {"vda": "/images/web.s3"}
    ledger.recover(DOM)
    assert ledger.verify(DOM) == []


def test_a_false_pivoted_loses_nothing() -> None:
    """The operator vouches for a pivot that never happened (the domain was destroyed before the
    job was ready, then started on the base): the guest's last writes, in the top only, stay on
    disk, and the note names the file."""
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    guest_write(storage, fake, 5, 0x55)  # in web.s1 only
    fake.destroy(DOM)
    fake.domains[DOM].sources = {"vda": BASE}  # virsh define on the base by hand
    fake.start(DOM)
    with pytest.raises(WrongImage):
        ledger.recover(DOM)
    notes = ledger.recover(DOM, pivoted=True)  # a lie
    assert any(f"{S1} was kept on disk" in n for n in notes)
    assert storage.read_all(S1)[5] == 0x55  # nothing lost


def test_recover_refuses_a_block_job_that_is_not_the_steps_own() -> None:
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    fake.jobs[(DOM, "vda")] = FakeJob("pull", S1, None, steps_left=1000)  # a hand blockpull
    version = ledger.vm(DOM).version
    with pytest.raises(ForeignBlockJob, match="stays open"):
        ledger.recover(DOM)
    assert ledger.vm(DOM).version == version
    del fake.jobs[(DOM, "vda")]
    ledger.recover(DOM)
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}


def test_a_live_delete_does_not_make_an_undefined_domain_persistent_again() -> None:
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    fake.domains[DOM].persistent = False  # virsh undefine of the running domain
    ledger.recover(DOM)
    assert not fake.domains[DOM].persistent
    assert recorded_sources(ledger) == {"vda": BASE}


def test_a_domain_undefined_and_destroyed_mid_commit_is_finished_offline() -> None:
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    fake.domains[DOM].persistent = False
    fake.destroy(DOM)  # transient now: gone
    notes = ledger.recover(DOM)
    assert "is gone" in notes[0]
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22} and not storage.exists(S1)
    assert recorded_sources(ledger) == {"vda": BASE}
    assert ledger.vm(DOM).operation is None


def test_every_reconcile_that_redefines_leaves_a_trace() -> None:
    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    for _ in range(2):
        fake.domains[DOM].sources = {"vda": BASE}  # virsh define with the adopt-time XML
        before = ledger.vm(DOM).version
        found = ledger.reconcile(DOM)
        assert any("redefined" in c for c in found.changes)
        assert ledger.vm(DOM).version > before
        assert fake.domains[DOM].sources == {"vda": S1}


def _persistent_xml(chain: str) -> str:
    return (f"<domain><name>{DOM}</name><devices><disk type='file' device='disk'>"
            f"<driver name='qemu' type='qcow2'/><source file='/images/web.s2'/>{chain}"
            "<target dev='vda'/></disk></devices></domain>")


def _store(path: str, inner: str = "") -> str:
    return f"<backingStore type='file'><format type='qcow2'/><source file='{path}'/>{inner}</backingStore>"


@pytest.mark.parametrize(("chain", "agrees"), [
    ("", True),  # libvirt probes it all at start
    (_store(S1), True),  # what libvirt writes at a live snapshot: the top of the chain
    (_store(S1, _store(BASE, "<backingStore/>")), True),  # all of it, closed
    (_store(S1, "<backingStore/>"), False),  # "no backing file" below web.s1: wrong
    (_store("/images/web.gone", _store(BASE)), False),  # a deleted image
], ids=["none", "top-only", "whole", "closed-early", "stale"])
def test_a_persistent_definition_may_hold_the_top_of_the_chain(chain: str, agrees: bool) -> None:
    from snapledger.adapters.libvirt.definitions import definition_findings

    storage, fake, ledger = make()
    ledger.snapshot(DOM, "s1")
    ledger.snapshot(DOM, "s2")
    found = definition_findings(ledger.vm(DOM), _persistent_xml(chain), "persistent", None)
    assert (found == []) == agrees, found


def test_our_own_pivot_after_a_vouch_deletes_the_top_as_usual() -> None:
    """--pivoted said while the domain still runs on the top: recover's own live commit pivots
    (PivotRequested, asked of libvirt), which supersedes the word: nothing is kept behind."""
    storage, fake, ledger = interrupted_live_delete(persistent=True)
    notes = ledger.recover(DOM, pivoted=True)
    assert not any("kept on disk" in n for n in notes), notes
    assert not storage.exists(S1) and fake.domains[DOM].live == {"vda": BASE}
    assert storage.read_all(BASE) == {0: 0x01, 2: 0x22}
