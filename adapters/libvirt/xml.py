"""libvirt's XML as snapledger reads and writes it: a domain's disks, snapshot metadata, the
<domainsnapshot> that asks for a live snapshot, and a definition with new disk sources.

Everything is parsed with `xml_input.parse_secure` (lxml with entities, DTDs and network off;
any DOCTYPE refused), also what libvirt itself hands over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lxml import etree

from snapledger.adapters.libvirt.xml_input import parse_secure
from snapledger.adapters.service.ports import DomainSnapshot
from snapledger.domain.errors import BadInput


@dataclass(frozen=True)
class DomainDisk:
    target: str
    device: str  # disk, cdrom, floppy, lun
    kind: str  # file, block, network, volume, dir, nvme, ...
    format: str | None  # the driver type: qcow2, raw, ...
    source: str | None  # a file path, a device path, or a network name
    chain: tuple[str, ...] = ()  # the files of <backingStore>, top first (live XML only)
    # the chain ends at an explicit empty <backingStore/> ("no backing file"), not where libvirt
    # was told nothing more (then it probes the rest when the domain starts)
    chain_closed: bool = False

    def left_alone_reason(self) -> str | None:
        """Why snapledger does not track this disk, or None if it does."""
        what = f"{self.target} ({self.device}, {self.kind}"
        what += f" {self.source})" if self.source else ", no source)"
        if self.device not in ("disk",):
            return f"{what}: not a disk"
        if self.kind != "file":
            return f"{what}: only file-backed qcow2 disks are tracked"
        if not self.source:
            return f"{what}: no image"
        if self.format == "raw" and not self.chain:
            return f"{what}: a raw image with no overlays"
        if self.format != "qcow2":
            return f"{what}: format {self.format or 'unknown'}, only qcow2 chains are tracked"
        return None


LibvirtSnapshot = DomainSnapshot  # one snapshot from libvirt's metadata (the service's type)


def domain_root(text: str) -> etree._Element:
    root = parse_secure(text.encode(), "domain XML")
    if root.tag != "domain":
        raise BadInput(f"domain XML: expected <domain>, found <{root.tag}>")
    return root


def _source_of(element: etree._Element) -> str | None:
    source = element.find("source")
    if source is None:
        return None
    for attribute in ("file", "dev", "name", "dir", "volume"):
        value = source.get(attribute)
        if value:
            return value
    return None


def _chain(disk: etree._Element) -> tuple[tuple[str, ...], bool]:
    """The files of the disk's <backingStore> chain, and whether it ends explicitly."""
    files = []
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        path = _source_of(store)
        if path:
            files.append(path)
        store = store.find("backingStore")
    return tuple(files), store is not None


def domain_disks(xml: str) -> list[DomainDisk]:
    root = domain_root(xml)
    disks = []
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        driver = disk.find("driver")
        if target is None or not target.get("dev"):
            raise BadInput("domain XML: a <disk> has no <target dev=...>")
        chain, closed = _chain(disk)
        disks.append(
            DomainDisk(
                target=str(target.get("dev")),
                device=disk.get("device", "disk"),
                kind=disk.get("type", "file"),
                format=driver.get("type") if driver is not None else None,
                source=_source_of(disk),
                chain=chain,
                chain_closed=closed,
            )
        )
    return disks


def disk_sources(xml: str) -> dict[str, str]:
    """Target -> source file of every file-backed disk."""
    return {d.target: d.source for d in domain_disks(xml) if d.kind == "file" and d.source}


def domain_name(xml: str) -> str | None:
    return domain_root(xml).findtext("name")


def parse_snapshot(text: str) -> LibvirtSnapshot:
    root = parse_secure(text.encode(), "libvirt snapshot XML")
    if root.tag != "domainsnapshot":
        raise BadInput(f"libvirt snapshot XML: expected <domainsnapshot>, found <{root.tag}>")
    name = root.findtext("name")
    if not name:
        raise BadInput("libvirt snapshot XML: no <name>")
    disks: dict[str, tuple[str, str | None]] = {}
    for disk in root.findall("disks/disk"):
        target = disk.get("name")
        if target:
            disks[target] = (disk.get("snapshot", "no"), _source_of(disk))
    memory = root.find("memory")
    created = root.findtext("creationTime")
    recorded = root.find("domain")
    sources: dict[str, str] = {}
    domain_text = None
    if recorded is not None:
        domain_text = str(etree.tostring(recorded, encoding="unicode"))
        for disk in recorded.findall("devices/disk"):
            dev = disk.find("target")
            path = _source_of(disk)
            if dev is not None and dev.get("dev") and path:
                sources[str(dev.get("dev"))] = path
    return LibvirtSnapshot(
        name=name,
        parent=root.findtext("parent/name"),
        description=root.findtext("description"),
        created=int(created) if created and created.isdigit() else None,
        state=root.findtext("state"),
        memory=memory.get("snapshot") if memory is not None else None,
        disks=disks,
        domain=domain_text,
        domain_sources=sources,
    )


def snapshot_request_xml(all_targets: list[str], overlays: Mapping[str, str]) -> str:
    """A <domainsnapshot> that moves each disk in `overlays` onto its overlay (external, qcow2)
    and leaves every other disk of the domain out (snapshot='no')."""
    root = etree.Element("domainsnapshot")
    disks = etree.SubElement(root, "disks")
    for target in all_targets:
        disk = etree.SubElement(disks, "disk", name=target)
        if target in overlays:
            disk.set("snapshot", "external")
            disk.set("type", "file")
            etree.SubElement(disk, "driver", type="qcow2")
            etree.SubElement(disk, "source", file=overlays[target])
        else:
            disk.set("snapshot", "no")
    return str(etree.tostring(root, encoding="unicode"))


def with_sources(xml: str, sources: Mapping[str, str]) -> str:
    """The definition `xml` with each disk in `sources` on that qcow2 file (libvirt finds the
    backing chain itself), without what only a running domain has (id, aliases)."""
    root = domain_root(xml)
    if "id" in root.attrib:
        del root.attrib["id"]
    for alias in root.findall(".//alias"):
        parent = alias.getparent()
        if parent is not None:
            parent.remove(alias)
    seen = set()
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev not in sources:
            continue
        seen.add(dev)
        disk.set("type", "file")
        for old in disk.findall("source") + disk.findall("backingStore"):
            disk.remove(old)
        driver = disk.find("driver")
        if driver is None:
            driver = etree.Element("driver", name="qemu")
            disk.insert(0, driver)
        driver.set("type", "qcow2")
        source = etree.Element("source", file=sources[str(dev)])
        driver.addnext(source)
    missing = sorted(set(sources) - seen)
    if missing:
        raise BadInput(f"domain XML has no disk {', '.join(missing)}")
    return str(etree.tostring(root, encoding="unicode"))


__all__ = [
    "DomainDisk",
    "LibvirtSnapshot",
    "disk_sources",
    "domain_disks",
    "domain_name",
    "parse_snapshot",
    "snapshot_request_xml",
    "with_sources",
]
