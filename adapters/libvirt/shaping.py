"""How a plan is shaped for a libvirt domain: the hypervisor's steps added before it is recorded.

Pure: it is told whether the domain runs and is persistent, and reads the persistent definition
only through `definition` when a step needs it; LibvirtHypervisor.shape asks libvirt.

- A live snapshot switches the running domain onto the new overlays in one atomic step
  (`SwitchDisks`, before the first `SetActive`).
- A revert stops a running domain first (`StopDomain`), redefines it with the ledger's active
  images as its sources (`DefineDomain`, from the target snapshot's recorded definition if it
  has one), and with `start` ends with `StartDomain`, so that a revert finished by `recover`
  starts the domain too. A transient domain is reverted only with `start`.
- Whenever the disks or their chains change while the domain is shut off, or while it runs with
  a persistent definition (libvirt may hold explicit <backingStore> chains there), the domain is
  redefined (`DefineDomain`, placed after the last `SetActive`, before any file is deleted).

`check_live_pulls` refuses a pull libvirt can't do live (into a backing file of a running disk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from snapledger.adapters.libvirt.errors import LiveStepImpossible
from snapledger.adapters.libvirt.running import LiveDisk, find_live
from snapledger.adapters.libvirt.xml import with_sources
from snapledger.domain.errors import BadInput
from snapledger.domain.steps import (
    Commit,
    DefineDomain,
    DeleteFile,
    OperationKind,
    Plan,
    Pull,
    RebaseUnsafe,
    SetActive,
    StartDomain,
    Step,
    StopDomain,
    SwitchDisks,
)
from snapledger.domain.vm import VirtualMachine

CHAIN_STEPS = (Commit, Pull, RebaseUnsafe, DeleteFile)  # steps that change what a chain holds


def final_disks(vm: VirtualMachine, steps: Iterable[Step]) -> dict[str, str]:
    """Each disk's active image once `steps` are done."""
    final = dict(vm.disks)
    for step in steps:
        if isinstance(step, SetActive):
            final[step.disk] = step.path
    return final


def check_live_pulls(live: list[LiveDisk], steps: Iterable[Step]) -> None:
    """LiveStepImpossible if a step pulls into a backing file of a running disk in `live`:
    libvirt pulls only into the active image."""
    for step in steps:
        if isinstance(step, Pull):
            where = find_live(live, step.image)
            if where is not None and where.chain[0] != step.image:
                raise LiveStepImpossible(
                    f"can't pull into {step.image} while domain {where.domain!r} runs: it is "
                    f"a backing file of {where.disk}, and libvirt pulls only into the active "
                    "image; use --strategy commit, or shut the domain down"
                )


def shape_plan(
    vm: VirtualMachine,
    plan: Plan,
    domain: str,
    *,
    running: bool,
    persistent: bool,
    definition: Callable[[], str],
    target: str | None = None,
    start: bool = False,
) -> Plan:
    """`plan` with the hypervisor's steps for `domain` added (see the module's docstring).
    `definition` gives the domain's persistent definition; it is called only when needed."""
    steps: list[Step] = list(plan.steps)
    final = final_disks(vm, steps)
    changed = {d: p for d, p in final.items() if vm.disks[d] != p}
    sets = [i for i, s in enumerate(steps) if isinstance(s, SetActive)]
    after_sets = sets[-1] + 1 if sets else len(steps)
    # A persistent definition may hold explicit <backingStore> chains (libvirt writes them
    # at live snapshots): any change of a chain under a disk redefines it, or `virsh start`
    # finds a deleted image there.
    chains_change = any(isinstance(s, CHAIN_STEPS) for s in steps)
    if plan.kind == OperationKind.REVERT:
        if not persistent and not start:
            raise BadInput(
                f"domain {domain!r} is transient: it exists only while it runs, so a revert "
                "must start it again (--running)"
            )
        snap_xml = vm.snapshot(target).domain_xml if target is not None else None
        base_xml = snap_xml or definition()
        define = DefineDomain(domain, with_sources(base_xml, final), persistent)
        steps.insert(after_sets, define)
        if running:
            steps.insert(0, StopDomain(domain))
        if start:
            steps.append(StartDomain(domain, "" if persistent else define.xml))
    elif running and plan.kind == OperationKind.SNAPSHOT and changed:
        switch = SwitchDisks(domain, tuple(sorted(changed.items())))
        steps.insert(sets[0], switch)
    elif running and persistent and (changed or chains_change):
        # an active commit: libvirt rewrites the persistent definition at the pivot, but if the
        # domain is shut off before it (the job is cancelled), recover commits with qemu-img
        # and the definition must not be left on the deleted top
        steps.insert(after_sets, DefineDomain(domain, with_sources(definition(), final)))
    elif not running and (changed or chains_change):
        if not persistent:
            raise BadInput(f"domain {domain!r} is neither running nor defined")
        steps.insert(after_sets, DefineDomain(domain, with_sources(definition(), final)))
    return replace(plan, steps=tuple(steps))


__all__ = ["CHAIN_STEPS", "check_live_pulls", "final_disks", "shape_plan"]
