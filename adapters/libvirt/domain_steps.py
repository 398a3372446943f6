"""Carrying out a plan's hypervisor steps on a domain: `SwitchDisks` (a live snapshot onto the
new overlays), `StopDomain`, `DefineDomain`, `StartDomain`. Each is idempotent: after a crash,
`recover` carries it out again, and libvirt shows whether it was done before.
"""

from __future__ import annotations

from snapledger.adapters.libvirt.port import LibvirtFailure, LibvirtPort, NoSuchDomain
from snapledger.adapters.libvirt.running import port_running
from snapledger.adapters.libvirt.xml import (
    disk_sources,
    domain_disks,
    snapshot_request_xml,
    with_sources,
)
from snapledger.domain.errors import StorageError
from snapledger.domain.steps import DefineDomain, StartDomain, Step, StopDomain, SwitchDisks
from snapledger.domain.vm import VirtualMachine


def carry_out(port: LibvirtPort, vm: VirtualMachine, step: Step) -> str | None:
    """A hypervisor step, or see from libvirt that it was done before a crash. Returns why a
    `StartDomain`'s domain did not start (None if it runs): a domain that won't start does not
    fail the operation, its disks are final and recorded."""
    if isinstance(step, SwitchDisks):
        switch_disks(port, step)
    elif isinstance(step, StopDomain):
        stop_domain(port, step)
    elif isinstance(step, DefineDomain):
        define_domain(port, vm, step)
    elif isinstance(step, StartDomain):
        return start_domain(port, step)
    else:
        raise StorageError(f"{step.action} is not a hypervisor step")
    return None


def switch_disks(port: LibvirtPort, step: SwitchDisks) -> None:
    """The running domain onto the overlays in one atomic snapshot; a domain stopped since the
    plan was made, by a new definition."""
    overlays = dict(step.disks)
    running = port.is_running(step.domain)
    xml = port.xml(step.domain, inactive=not running)
    sources = disk_sources(xml)
    done = [d for d, p in overlays.items() if sources.get(d) == p]
    if len(done) == len(overlays):
        return
    if done:
        raise LibvirtFailure(
            f"domain {step.domain!r} is on the new overlays for {', '.join(done)} only"
        )
    if running:
        targets = [d.target for d in domain_disks(xml)]
        port.create_disk_snapshot(step.domain, snapshot_request_xml(targets, overlays))
    else:  # stopped since the plan was made: the same switch, by a new definition
        port.define(with_sources(port.xml(step.domain, inactive=True), overlays))


def stop_domain(port: LibvirtPort, step: StopDomain) -> None:
    try:
        if port.is_running(step.domain):
            port.destroy(step.domain)
    except NoSuchDomain:
        pass  # a transient domain is gone once stopped


def define_domain(port: LibvirtPort, vm: VirtualMachine, step: DefineDomain) -> None:
    """Define the step's XML, unless the domain is transient (started from the XML after the
    operation) or was undefined since the plan was made; refused if it was started meanwhile
    on other images than the XML names."""
    if not step.persistent:
        return  # a transient domain is started from the XML (after the operation)
    try:
        if not port.is_persistent(step.domain):
            return  # undefined since the plan was made: not made persistent again
    except NoSuchDomain:
        return  # undefined and stopped: nothing to define (the ledger keeps its XML)
    wanted = disk_sources(step.xml)
    if port.is_running(step.domain):
        live = disk_sources(port.xml(step.domain))
        moved = {d: p for d, p in wanted.items() if live.get(d) != p and d in vm.disks}
        if moved:
            raise LibvirtFailure(
                f"domain {step.domain!r} was started during the operation and runs on "
                f"other images ({', '.join(sorted(moved))}); shut it down and run "
                "'snapledger recover'"
            )
    port.define(step.xml)


def start_domain(port: LibvirtPort, step: StartDomain) -> str | None:
    """Start the domain unless it runs. Returns libvirt's failure if it did not start."""
    if port_running(port, step.domain):
        return None
    try:
        if step.xml:
            port.create(step.xml)
        else:
            port.start(step.domain)
    except LibvirtFailure as error:
        return str(error)
    return None


__all__ = ["carry_out", "define_domain", "start_domain", "stop_domain", "switch_disks"]
