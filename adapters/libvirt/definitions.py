"""A libvirt domain's definitions against the ledger: what to record, what differs, what to
redefine.

The ledger records the definition a domain starts from (`DefinitionRecorded`) around every
operation, on the images the ledger says, and never with libvirt's explicit `<backingStore>`
chains (libvirt probes them at start, so a definition stays right whatever happens below the
active image). `findings` compares libvirt's definitions with the ledger for drift and `verify`:
the one the domain runs on (or would start from), sources and chains, and when it runs its
persistent one too, since `virsh start` must find the images the ledger says.
"""

from __future__ import annotations

from collections.abc import Mapping

from snapledger.adapters.libvirt.port import LibvirtPort, NoSuchDomain
from snapledger.adapters.libvirt.xml import DomainDisk, disk_sources, domain_disks, with_sources
from snapledger.domain.errors import BadInput
from snapledger.domain.vm import VirtualMachine


def ledger_definition(vm: VirtualMachine, disks: Mapping[str, str] | None = None) -> str:
    """The domain's definition built from the ledger: the recorded one, on the images the ledger
    says the disks use (`disks` overriding some), backing chains left to libvirt."""
    if vm.domain_xml is None:
        raise BadInput(f"VM {vm.name!r} has no recorded domain definition")
    return with_sources(vm.domain_xml, {**vm.disks, **(disks or {})})


def definition_hint(vm: VirtualMachine, disks: Mapping[str, str]) -> str:
    """Where the operator finds the definition to start the domain with: the one `show --json`
    gives (domain_xml, built on the ledger's images), with `disks` as sources."""
    parts = [
        f"{d} on {p}" if vm.disks.get(d) == p else f"{d}'s source changed to {p}"
        for d, p in sorted(disks.items())
    ]
    return f"the definition 'snapledger show {vm.name} --json' gives (domain_xml, {', '.join(parts)})"


def current_definition(port: LibvirtPort, domain: str, vm: VirtualMachine) -> str:
    """The definition to record around an operation: libvirt's persistent one (a transient
    domain's, while it runs) if it names the ledger's images, else the recorded one on the
    ledger's images."""
    try:
        xml = port.xml(domain, inactive=True)
    except NoSuchDomain:
        return ledger_definition(vm)
    sources = disk_sources(xml)
    if any(sources.get(d) != p for d, p in vm.disks.items()):
        return ledger_definition(vm)
    # without libvirt's <backingStore> chains (it probes them at start), so that a source
    # changed by hand, as a hint may say, starts the domain on that image's own chain
    return with_sources(xml, vm.disks)


def findings(port: LibvirtPort, domain: str, vm: VirtualMachine, ignore: str | None = None) -> list[str]:
    """Where libvirt's idea of the disks differs from the ledger's: drift (but for disk
    `ignore`, which a swap-disk is recording)."""
    try:
        running = port.is_running(domain)
        acting = port.xml(domain, inactive=not running)
        persistent = (
            port.xml(domain, inactive=True) if running and port.is_persistent(domain) else None
        )
    except NoSuchDomain as gone:
        return [f"libvirt: {gone}"]
    out = definition_findings(vm, acting, "running" if running else "persistent", ignore)
    if persistent is not None and not out:  # the running one agrees: does the next boot's?
        out = definition_findings(vm, persistent, "persistent", ignore, next_boot=True)
    return out


def definition_findings(
    vm: VirtualMachine, xml: str, which: str, ignore: str | None, next_boot: bool = False
) -> list[str]:
    """The differences of one definition (`which`: running or persistent) from the ledger.
    `next_boot`: it is the persistent definition of a domain that runs on the ledger's images."""
    disks = {d.target: d for d in domain_disks(xml) if d.kind == "file" and d.source}
    out = []
    for disk, active in sorted(vm.disks.items()):
        if disk == ignore:
            continue
        seen = disks.get(disk)
        if seen is None or seen.source != active:
            out.append(_source_finding(vm, disk, seen.source if seen else None, which, next_boot))
        elif not _chain_agrees(seen, vm.chain_of(active)[1:], which):
            out.append(_chain_finding(vm, disk, seen, which))
    return out


def _chain_agrees(seen: DomainDisk, expected: list[str], which: str) -> bool:
    """A running domain's chain is all of it (libvirt probed it). A persistent definition may
    hold only the top of it (libvirt writes what it knew at a live snapshot, and probes the rest
    at start): it agrees if it is the beginning of the ledger's chain and does not end early
    with an explicit "no backing file"."""
    chain = list(seen.chain)
    if which != "persistent":
        return not chain or chain == expected
    if chain != expected[: len(chain)]:
        return False
    return not seen.chain_closed or chain == expected


def _chain_finding(vm: VirtualMachine, disk: str, seen: DomainDisk, which: str) -> str:
    """libvirt's explicit <backingStore> chain differs: what QEMU reads, or opens at next start."""
    active = vm.disks[disk]
    expected = vm.chain_of(active)[1:]
    shown = " <- ".join(reversed([active, *seen.chain]))
    ours = " <- ".join(reversed([active, *expected]))
    if which == "persistent":
        strangers = [p for p in seen.chain if p not in expected]
        extra = f" ({', '.join(strangers)} not in it)" if strangers else ""
        return (
            f"{disk}: libvirt's persistent definition names the chain {shown}, the ledger "
            f"{ours}{extra}; 'snapledger reconcile {vm.name}' redefines it on the ledger's chain"
        )
    return (
        f"{disk}: the running domain reads the chain {shown}, the ledger says {ours} (a block "
        f"job run by hand?); record what the files say with 'snapledger reconcile {vm.name}'"
    )


def _source_finding(
    vm: VirtualMachine, disk: str, seen: str | None, which: str, next_boot: bool
) -> str:
    active = vm.disks[disk]
    head = f"{disk}: libvirt's {which} definition uses {seen or 'no file'}, the ledger says {active}"
    if seen is None:
        return head
    if next_boot:
        return (
            f"{head} (the domain runs on {active}; its next start would not): 'snapledger "
            f"reconcile {vm.name}' redefines it on {active}"
        )
    frozen = vm.frozen_images()
    if seen in frozen:
        snap, _ = frozen[seen]
        return (
            f"{head}; {seen} is snapshot {snap}'s frozen image, so a merge by hand (virsh "
            f"blockcommit, snapshot-delete) or a switch onto it happened behind snapledger's "
            f"back and {snap} may no longer read what it froze. It can't be recorded as a swap "
            f"(that would write a snapshot): put {disk} back on {active} if that is still "
            f"right, or copy what you need and start afresh ('snapledger retire {vm.name}', "
            "then adopt it again)"
        )
    if seen in vm.chain_of(active):
        return (
            f"{head}; {seen} is below {active} in the ledger's chain (a merge by hand?): put "
            f"{disk} back on {active}, or retire the VM and adopt it again"
        )
    advice = f"record it with 'snapledger swap-disk {vm.name} {disk} {seen}'"
    if which == "persistent":
        advice += f"; or 'snapledger reconcile {vm.name}' redefines the domain on the ledger's image"
    return f"{head} (changed behind snapledger's back? {advice})"


def stale_definition(
    port: LibvirtPort, domain: str, vm: VirtualMachine
) -> tuple[str, list[str]] | None:
    """A persistent definition that names other images or chains than the ledger while the
    domain is shut off or runs on the ledger's images: the definition to replace it with (what
    `reconcile` offers) and the images the stale one names instead, else None."""
    try:
        if not port.is_persistent(domain):
            return None
        if port.is_running(domain):
            live = disk_sources(port.xml(domain))
            if any(live.get(d) != p for d, p in vm.disks.items()):
                return None  # the running domain disagrees: drift, not a stale definition
        xml = port.xml(domain, inactive=True)
    except NoSuchDomain:
        return None
    if not definition_findings(vm, xml, "persistent", None):
        return None
    named = sorted({p for p in disk_sources(xml).values() if p not in vm.disks.values()})
    return with_sources(xml, vm.disks), named


__all__ = [
    "current_definition",
    "definition_findings",
    "definition_hint",
    "findings",
    "ledger_definition",
    "stale_definition",
]
