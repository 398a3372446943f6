"""Tests written for mutants of the image DAG that survived the fast unit tests (issue 15, item 4;
docs/reliability.md, "Mutation score"). Each states a rule the code depends on, not how it is written."""

from __future__ import annotations

import dataclasses

import pytest
from dag_reference import eager_dag, lazy_dag
from small_histories import (
    BASE,
    IMG,
    SCENARIOS,
    VSIZE,
    swapped,
    vm_with,
)

from snapledger.adapters.compose import ledger_service, this_host
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.images import Origin, OwnerClass
from snapledger.projections.dag import ImageDag, Need, NeedKind, owner_class
from snapledger.projections.explain import explain_image

# --- the image DAG (projections/dag.py): the lazy DAG against the one built at once --------------




@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_lazy_dag_is_the_one_built_at_once(scenario: str) -> None:
    storage, ledger = SCENARIOS[scenario]()
    view = ledger.view
    present = {vm.disks["vda"] for vm in view.live_vms().values()}
    strange = {p: [f"{p}.users-clone"] for p in sorted(present)[:1]}
    for options in [
        {},
        {"ignore_detached_of": "vm"},
        {"dependants": strange},
        {"home": this_host()},
        {"home": "hostb"},
    ]:
        whole = eager_dag(view, **options)
        assert lazy_dag(view, **options) == whole, options
        for path in sorted(whole, reverse=True):  # one image first, as a planner asks
            one = ImageDag(view, **options)
            assert one.needed(path) == bool(whole[path]["needs"]), path
            assert one.needed_children(path) == [
                c for c in whole[path]["children"] if whole[c]["needs"]
            ], path
            chain = [path]
            while (below := whole[chain[-1]]["facts"].backing) in whole:
                chain.append(below)
            assert one.chain(path) == chain and one.depth(path) == len(chain)
            assert one.dependants(path) == list(options.get("dependants", {}).get(path, []))
        dag = ImageDag(view, **options)
        assert len(dag.nodes) == len(whole) and len(dag.children) == sum(
            1 for p in whole if whole[p]["children"]
        )
        assert "/nowhere.qcow2" not in dag.nodes and None not in dag.nodes


def test_who_owns_an_image() -> None:
    """semantics.md, "Who owns an image": read-only if two or more VMs use it or it was found
    below an adopted disk; else adopted if any holder adopted it; else managed."""
    assert owner_class({"a"}, {Origin.MANAGED}) is OwnerClass.MANAGED
    assert owner_class(set(), {Origin.MANAGED}) is OwnerClass.MANAGED
    assert owner_class({"a"}, {Origin.ADOPTED}) is OwnerClass.ADOPTED
    assert owner_class({"a", "b"}, {Origin.MANAGED}) is OwnerClass.READ_ONLY
    assert owner_class({"a", "b", "c"}, {Origin.ADOPTED}) is OwnerClass.READ_ONLY
    assert owner_class({"a"}, {Origin.FOUND, Origin.ADOPTED}) is OwnerClass.READ_ONLY


def test_what_may_be_written_and_deleted() -> None:
    storage, ledger = swapped()
    view, vm = ledger.view, ledger.vm("vm")
    dag = ImageDag(view)
    detached = vm.snapshots["s3"].disks["vda"]  # base.s2, frozen by s3; base.s3 is detached
    leftover = next(p for p, r in vm.images.items() if r.detached)
    assert not dag.nodes[leftover].may_delete  # detached: kept until gc --include-detached
    assert ImageDag(view, ignore_detached_of="vm").nodes[leftover].may_delete
    assert not dag.nodes[BASE].may_delete  # the user's file, frozen by s1
    assert not dag.nodes[detached].may_delete
    assert not dag.may_write(leftover, "vm")  # detached: kept as it is until discarded
    assert not dag.may_write(BASE, "vm")  # frozen by s1
    assert dag.may_write(BASE, "vm", ignoring_snapshot="s1")  # its children are the caller's
    s1_child = vm.snapshots["s2"].disks["vda"]
    assert not dag.may_write(s1_child, "vm")
    assert dag.may_write(s1_child, "vm", ignoring_snapshot="s2")
    assert not dag.may_write(s1_child, "vm", ignoring_snapshot="s3")
    assert not dag.may_write(s1_child, "other", ignoring_snapshot="s2")
    assert not explain_image(view, "vm", leftover).may_delete


def test_a_template_no_one_needs_any_more_is_never_deleted() -> None:
    storage = SimulatedStorage()
    storage.make_image("/pool/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/vms/a/a.qcow2", VSIZE, {}, backing="/pool/t.qcow2")
    storage.make_image("/vms/a/fresh.qcow2", VSIZE, {})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/a.qcow2"}, pools=["/pool"])
    ledger.swap_disk("a", "vda", "/vms/a/fresh.qcow2")
    dag = ImageDag(ledger.view, ignore_detached_of="a")
    assert dag.nodes["/pool/t.qcow2"].owner is OwnerClass.READ_ONLY
    assert not dag.nodes["/pool/t.qcow2"].may_delete
    ledger.gc("a", include_detached=True)
    assert storage.read_all("/pool/t.qcow2") == {0: 0x10}
    assert storage.exists("/vms/a/a.qcow2")


def test_a_gc_plan_counts_its_images_in_words() -> None:
    storage, ledger = swapped()
    (one,) = ledger.gc("vm", include_detached=True, dry_run=True)
    assert len(one.steps) == 1 and one.strategy == "1 image nothing needs"


def test_a_chain_seen_from_another_host_ends_at_its_last_shared_image() -> None:
    """Host a's VM has its disk in the shared directory over a file of host a's own: host b
    sees the shared image and not the local file below it."""
    storage = SimulatedStorage()
    storage.make_image("/a/w.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/shared/s.qcow2", VSIZE, {}, backing="/a/w.qcow2")
    a = ledger_service(LedgerApplication("memory:"), storage, host="hosta")
    a.adopt("vs", {"vda": "/shared/s.qcow2"}, shared=["/shared"], pools=["/a"])
    assert ImageDag(a.refresh(), home="hosta").chain("/shared/s.qcow2") == ["/shared/s.qcow2", "/a/w.qcow2"]
    from_b = ImageDag(a.refresh(), home="hostb")
    assert from_b.chain("/shared/s.qcow2") == ["/shared/s.qcow2"] and from_b.depth("/shared/s.qcow2") == 1


def test_an_image_is_needed_through_images_that_no_one_holds_directly() -> None:
    """base <- mid <- top: only top (the active disk) is held; asked first, base is needed
    through two levels of images whose own need is not known yet."""
    storage = SimulatedStorage()
    storage.make_image("/p/base.qcow2", VSIZE, {0: 1})
    storage.make_image("/p/mid.qcow2", VSIZE, {1: 1}, backing="/p/base.qcow2")
    storage.make_image("/v/top.qcow2", VSIZE, {}, backing="/p/mid.qcow2")
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("deep", {"vda": "/v/top.qcow2"}, pools=["/p"])
    assert ImageDag(ledger.view).needed("/p/base.qcow2")
    assert ImageDag(ledger.view).needed("/p/mid.qcow2")


def test_a_need_is_a_value() -> None:
    need = Need(NeedKind.ACTIVE, "vm", "vda")
    assert len({need, Need(NeedKind.ACTIVE, "vm", "vda")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        need.vm = "other"  # type: ignore[misc]


def test_an_image_one_vm_holds_may_not_be_written_for_any_other() -> None:
    """base.s1 was s2's frozen image; s2 went as metadata only (a user's clone rested on it),
    then the clone went: only the present rests on base.s1, and it is vm's alone."""
    storage, ledger = vm_with(snapshots=2)
    s1_child = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.make_image(f"{IMG}/clone.qcow2", VSIZE, {}, backing=s1_child)
    assert ledger.delete("vm", "s2").steps == ()
    storage.delete(f"{IMG}/clone.qcow2")
    dag = ImageDag(ledger.refresh())
    assert all(n.kind is NeedKind.BELOW for n in dag.nodes[s1_child].needs)
    assert dag.may_write(s1_child, "vm")
    for other in ("a", "zz"):  # names sorting before and after the holder's
        assert not dag.may_write(s1_child, other)
