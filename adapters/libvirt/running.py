"""What the running QEMUs on a connection have open: each file-backed disk's chain (`LiveDisk`).

An image in such a chain is changed only by a libvirt block job (adapters/libvirt/block_jobs.py);
every other image by qemu-img. Reads libvirt through LibvirtPort; no libvirt import.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapledger.adapters.libvirt.port import LibvirtPort, NoSuchDomain
from snapledger.adapters.libvirt.xml import domain_disks


@dataclass
class LiveDisk:
    domain: str
    disk: str
    chain: list[str]  # active first


def port_running(port: LibvirtPort, domain: str) -> bool:
    """Whether `domain` runs; a domain that does not exist does not."""
    try:
        return port.is_running(domain)
    except NoSuchDomain:
        return False


def live_disks(port: LibvirtPort) -> list[LiveDisk]:
    """The chain of every file-backed disk of every running domain on the connection."""
    out = []
    for domain in port.running_domains():
        try:
            xml = port.xml(domain)
        except NoSuchDomain:
            continue  # stopped meanwhile
        for disk in domain_disks(xml):
            if disk.kind == "file" and disk.source:
                out.append(LiveDisk(domain, disk.target, [disk.source, *disk.chain]))
    return out


def live_chain(port: LibvirtPort, live: LiveDisk) -> list[str]:
    """The chain `live`'s disk reads now (active first), or [] if the domain lost the disk."""
    for disk in domain_disks(port.xml(live.domain)):
        if disk.target == live.disk and disk.source:
            return [disk.source, *disk.chain]
    return []


def find_live(live: list[LiveDisk], path: str) -> LiveDisk | None:
    """The running disk whose chain holds `path`, or None."""
    for disk in live:
        if path in disk.chain:
            return disk
    return None


__all__ = ["LiveDisk", "find_live", "live_chain", "live_disks", "port_running"]
