"""More rules of the image DAG (projections/dag.py), written for the mutants a whole-module run left
alive (issue 15, item 4; docs/reliability.md, "Mutation score"). Each test states a rule the code
depends on, not how it is written."""

from __future__ import annotations

import signal
from types import FrameType

import pytest
from small_histories import BASE, IMG, VSIZE, swapped, template, two_hosts_shared, vm_with

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.queries import diff
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.images import Origin, OwnerClass
from snapledger.projections.dag import ImageDag, Need, NeedKind


def test_an_adopted_image_nothing_needs_is_released_never_deleted() -> None:
    """semantics.md: adopted images may be deleted never (only released), even when nothing
    needs them any more (the disk swapped away, its detached hold discarded)."""
    storage = SimulatedStorage()
    storage.make_image("/vms/a/vda.qcow2", VSIZE, {0: 0x11})
    storage.make_image("/vms/a/fresh.qcow2", VSIZE, {})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/vda.qcow2"})
    ledger.swap_disk("a", "vda", "/vms/a/fresh.qcow2")
    node = ImageDag(ledger.view, ignore_detached_of="a").nodes["/vms/a/vda.qcow2"]
    assert node.owner is OwnerClass.ADOPTED and node.needs == []
    assert not node.may_delete


def test_a_file_resting_on_a_shared_image_is_its_dependant_whichever_host_holds_it_first() -> None:
    """Seen from host b, the shared template is held first by host a's VM (adopted first) and
    then by host b's own VM: a file of host b's resting on it still makes it need to stay."""
    storage, ledger = two_hosts_shared()
    view = ledger.refresh()
    assert [n for n in view.live_vms() if "/shared/t.qcow2" in view.vms[n].images][:2] == ["va", "vb"]
    dag = ImageDag(view, home="hostb", dependants={"/shared/t.qcow2": ["/b/own.qcow2"]})
    assert dag.dependants("/shared/t.qcow2") == ["/b/own.qcow2"]
    assert Need(NeedKind.DEPENDANT, "vb", "/b/own.qcow2") in dag.nodes["/shared/t.qcow2"].direct_needs
    assert Need(NeedKind.ELSEWHERE, "va", "hosta") in dag.nodes["/shared/t.qcow2"].direct_needs


def _early_vm_over_a_frozen_image() -> tuple[SimulatedStorage, Snapledger, str]:
    """VM `early` (adopted first) swaps onto a file of its own over `vm`'s frozen base.s1, after
    someone chmod'ed base.s1: the two VMs' records of base.s1 differ (its ctime)."""
    storage = SimulatedStorage()
    storage.make_image("/vms/e/e.qcow2", VSIZE, {0: 1})
    storage.make_image(BASE, VSIZE, {0: 0x10})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("early", {"vda": "/vms/e/e.qcow2"}, pools=[IMG])
    ledger.adopt("vm", {"vda": BASE})
    ledger.snapshot("vm", "s1")
    storage.write(ledger.vm("vm").disks["vda"], 1, 0x21)
    ledger.snapshot("vm", "s2")
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.chmod(frozen)
    storage.make_image(f"{IMG}/own.qcow2", VSIZE, {}, backing=frozen)
    ledger.swap_disk("early", "vda", f"{IMG}/own.qcow2")
    return storage, ledger, frozen


def test_a_node_takes_the_facts_of_the_vm_that_made_the_image() -> None:
    """Records of one file can disagree; the VM that made it (managed) knows it best, whichever
    VM holds it first."""
    storage, ledger, frozen = _early_vm_over_a_frozen_image()
    view = ledger.refresh()
    early, maker = view.vm("early").images[frozen], view.vm("vm").images[frozen]
    assert (early.origin, maker.origin) == (Origin.FOUND, Origin.MANAGED)
    assert early.facts != maker.facts and list(view.live_vms()) == ["early", "vm"]
    assert ImageDag(view).nodes[frozen].facts == maker.facts
    assert ImageDag(view).node_facts(frozen) == maker.facts


def test_without_its_maker_a_node_takes_the_facts_of_the_vm_holding_it_longest() -> None:
    """Two VMs found one template; it was chmod'ed between their adoptions. No VM made it: the
    node keeps the first VM's record (the ledger's order), as the DAG built at once does."""
    storage = SimulatedStorage()
    storage.make_image("/pool/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/vms/a/a.qcow2", VSIZE, {}, backing="/pool/t.qcow2")
    storage.make_image("/vms/b/b.qcow2", VSIZE, {}, backing="/pool/t.qcow2")
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/a.qcow2"}, pools=["/pool"])
    storage.chmod("/pool/t.qcow2")
    ledger.adopt("b", {"vda": "/vms/b/b.qcow2"}, pools=["/pool"])
    view = ledger.refresh()
    first, second = (view.vm(n).images["/pool/t.qcow2"] for n in ("a", "b"))
    assert first.facts != second.facts and first.origin is second.origin is Origin.FOUND
    assert ImageDag(view).nodes["/pool/t.qcow2"].facts == first.facts


@pytest.mark.parametrize("moved_to", ["/pool/a.qcow2", "/pool/z.qcow2"])  # before and after t
def test_an_image_rests_only_on_the_backing_its_node_names(moved_to: str) -> None:
    """A user rebased the template /pool/u between two adoptions: VM a recorded it over
    /pool/t, VM b over `moved_to`. The node takes a's record, and the DAG's children agree
    with its chains: u is a child of t, of nothing else."""
    storage = SimulatedStorage()
    storage.make_image("/pool/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image(moved_to, VSIZE, {0: 0x10})
    storage.make_image("/pool/u.qcow2", VSIZE, {1: 0x11}, backing="/pool/t.qcow2")
    storage.make_image("/vms/a/a.qcow2", VSIZE, {}, backing="/pool/u.qcow2")
    storage.make_image("/vms/b/b.qcow2", VSIZE, {}, backing="/pool/u.qcow2")
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/a.qcow2"}, pools=["/pool"])
    storage.rebase_unsafe("/pool/u.qcow2", moved_to, "qcow2", fmt="qcow2")
    ledger.adopt("b", {"vda": "/vms/b/b.qcow2"}, pools=["/pool"])
    view = ledger.refresh()
    assert view.vm("b").images["/pool/u.qcow2"].facts.backing == moved_to
    dag = ImageDag(view)
    for path in dag.nodes:
        assert dag.children_of(path) == sorted(c for c in dag.nodes if dag.chain(c)[1:2] == [path]), path
    assert dag.children_of(moved_to) == [] and dag.children_of("/pool/t.qcow2") == ["/pool/u.qcow2"]


def test_an_image_only_unneeded_images_rest_on_is_not_needed() -> None:
    """base.s1 was the present; the user's own1 was swapped in over it, then own2 (on nothing)
    over own1's place. Once their detached holds are disregarded (gc --include-detached), neither
    base.s1 nor own1 resting on it is needed; with them, both are."""
    storage, ledger = vm_with(snapshots=1)
    present = ledger.vm("vm").disks["vda"]
    storage.make_image(f"{IMG}/own1.qcow2", VSIZE, {}, backing=present)
    ledger.swap_disk("vm", "vda", f"{IMG}/own1.qcow2")
    storage.make_image(f"{IMG}/own2.qcow2", VSIZE, {})
    ledger.swap_disk("vm", "vda", f"{IMG}/own2.qcow2")
    assert not ImageDag(ledger.view, ignore_detached_of="vm").needed(present)
    assert ImageDag(ledger.view, ignore_detached_of="vm").needed(BASE)  # frozen by s1
    assert ImageDag(ledger.view).needed(present)


def test_an_image_found_below_an_adopted_disk_is_never_written_even_for_its_one_vm() -> None:
    """semantics.md: read-only images may be written never. /pool/u is found below VM a's disk
    and in no other VM's chain, and nothing but images above it needs it."""
    storage, ledger = template()
    dag = ImageDag(ledger.view)
    node = dag.nodes["/pool/u.qcow2"]
    assert node.owner is OwnerClass.READ_ONLY and node.vms == ("a",) and not node.detached
    assert all(n.kind is NeedKind.BELOW for n in node.needs)
    assert not dag.may_write("/pool/u.qcow2", "a")
    assert not dag.may_write("/pool/u.qcow2", "a", ignoring_snapshot="s1")


def test_a_detached_image_is_never_written_even_once_its_hold_is_disregarded() -> None:
    storage, ledger = swapped()
    leftover = next(p for p, r in ledger.vm("vm").images.items() if r.detached)
    dag = ImageDag(ledger.view, ignore_detached_of="vm")
    assert dag.nodes[leftover].needs == [] and dag.nodes[leftover].may_delete
    assert not dag.may_write(leftover, "vm")


def test_deleting_a_snapshot_named_like_a_disk_lifts_no_hold_of_that_disk() -> None:
    """Snapshot `vda` of disk vda: ignoring the snapshot's hold leaves the active image held."""
    storage, ledger = vm_with(snapshots=0)
    ledger.snapshot("vm", "vda")
    active = ledger.vm("vm").disks["vda"]
    dag = ImageDag(ledger.view)
    assert dag.nodes[active].needs == [Need(NeedKind.ACTIVE, "vm", "vda")]
    assert not dag.may_write(active, "vm", ignoring_snapshot="vda")
    assert dag.may_write(BASE, "vm", ignoring_snapshot="vda")


def test_the_chain_of_an_image_the_dag_does_not_know_is_that_image_alone() -> None:
    """A retired VM holds nothing: `diff` across its retire shows its disk's chain going from
    the whole chain to the active image alone."""
    storage, ledger = vm_with(snapshots=1)
    assert ImageDag(ledger.view).chain("/nowhere.qcow2") == ["/nowhere.qcow2"]
    start = ledger.last_position()
    active = ledger.vm("vm").disks["vda"]
    ledger.retire("vm")
    changed = diff(ledger, "vm", start, ledger.last_position())
    assert changed["disks"]["vda"]["chain"] == {"from": [active, BASE], "to": [active]}


def _too_long(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("still walking after 10 s")


def test_a_loop_of_backing_files_made_by_hand_ends_every_chain() -> None:
    """VM b (adopted first) swaps onto a file over t after a user rebased, by hand, a's frozen
    t.s1 onto nothing and a's t onto t.s1. b's records say t rests on t.s1, a's (t.s1 is a's
    overlay, so its record wins) that t.s1 rests on t: a loop. Every chain stops before it
    repeats an image, and swap-disk finishes (it once walked the loop for ever)."""
    storage = SimulatedStorage()
    storage.make_image(f"{IMG}/b.qcow2", VSIZE, {0: 1})
    storage.make_image(f"{IMG}/t.qcow2", VSIZE, {0: 2})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("b", {"vda": f"{IMG}/b.qcow2"})
    ledger.adopt("a", {"vda": f"{IMG}/t.qcow2"})
    ledger.snapshot("a", "s1")
    ledger.snapshot("a", "s2")
    storage.rebase_unsafe(f"{IMG}/t.s1", None, None, fmt="qcow2")
    storage.rebase_unsafe(f"{IMG}/t.qcow2", f"{IMG}/t.s1", "qcow2", fmt="qcow2")
    storage.make_image(f"{IMG}/own.qcow2", VSIZE, {}, backing=f"{IMG}/t.qcow2")
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(10)
    try:
        ledger.swap_disk("b", "vda", f"{IMG}/own.qcow2")
        dag = ImageDag(ledger.refresh())
        assert dag.chain(f"{IMG}/own.qcow2") == [f"{IMG}/own.qcow2", f"{IMG}/t.qcow2", f"{IMG}/t.s1"]
        assert dag.chain(f"{IMG}/t.s1") == [f"{IMG}/t.s1", f"{IMG}/t.qcow2"]
        assert dag.depth(f"{IMG}/t.s2") == 3 and dag.needed(f"{IMG}/t.qcow2")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_an_image_in_a_loop_of_backing_files_is_needed_through_the_image_above_the_loop() -> None:
    """d (the disk) rests on m, m on n; a rebase by hand made n rest on m again, and the facts
    observed say so: m and n, held by no one directly, form a loop. Asked first, n is needed
    (through m, which d rests on); the walk ends, and ends at once."""
    storage = SimulatedStorage()
    storage.make_image("/pool/n.qcow2", VSIZE, {0: 1})
    storage.make_image("/pool/m.qcow2", VSIZE, {1: 1}, backing="/pool/n.qcow2")
    storage.make_image(f"{IMG}/d.qcow2", VSIZE, {}, backing="/pool/m.qcow2")
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": f"{IMG}/d.qcow2"}, pools=["/pool"])
    vm = ledger.vm("vm")
    looped = vm.images["/pool/n.qcow2"].facts.with_backing("/pool/m.qcow2", "qcow2")
    vm.observe_images([looped])
    ledger.save(vm)
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(10)
    try:
        dag = ImageDag(ledger.refresh())
        assert dag.needed("/pool/n.qcow2") and dag.needed("/pool/m.qcow2")
        assert not dag.nodes["/pool/n.qcow2"].direct_needs
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
