"""XML a user hands in: libvirt's <domainsnapshot>, the RFC's <domainsnapshotrevert>, domain XML.

Parsed with lxml with entities, DTDs and network access off; any DOCTYPE is refused outright, so
no entity expansion or external fetch can happen whatever the parser's defaults become.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from snapledger.domain.errors import BadInput

MAX_XML_BYTES = 1 << 20


def parse_secure(text: bytes, what: str) -> etree._Element:
    if len(text) > MAX_XML_BYTES:
        raise BadInput(f"{what}: larger than {MAX_XML_BYTES} bytes")
    if b"<!DOCTYPE" in text.upper() or b"<!ENTITY" in text.upper():
        raise BadInput(f"{what}: DOCTYPE and entity declarations are refused")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(text, parser)
    except etree.XMLSyntaxError as error:
        raise BadInput(f"{what}: not well-formed XML: {error}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]  # lxml-stubs lacks it
        raise BadInput(f"{what}: DOCTYPE is refused")
    return root


def _disk_sources(root: etree._Element, what: str) -> tuple[dict[str, str], set[str]]:
    """<disks><disk name='vda' [snapshot='external'|'no']><source file='...'/></disk></disks>."""
    overlays: dict[str, str] = {}
    excluded: set[str] = set()
    disks = root.find("disks")
    for disk in disks.findall("disk") if disks is not None else []:
        name = disk.get("name")
        if not name:
            raise BadInput(f"{what}: a <disk> has no name attribute")
        if name in overlays or name in excluded:
            raise BadInput(f"{what}: disk {name!r} appears twice")
        mode = disk.get("snapshot", "external")
        if mode == "no":
            excluded.add(name)
            continue
        if mode != "external":
            raise BadInput(f"{what}: disk {name!r}: only snapshot='external' or 'no' is supported")
        source = disk.find("source")
        if source is not None:
            path = source.get("file")
            if not path:
                raise BadInput(f"{what}: disk {name!r}: <source> needs a file attribute")
            overlays[name] = path
    return overlays, excluded


def revert_overlays(text: bytes) -> dict[str, str]:
    """The RFC's <domainsnapshotrevert>: disk -> overlay path."""
    root = parse_secure(text, "revert XML")
    if root.tag != "domainsnapshotrevert":
        raise BadInput(f"revert XML: expected <domainsnapshotrevert>, found <{root.tag}>")
    overlays, excluded = _disk_sources(root, "revert XML")
    if excluded:
        raise BadInput("revert XML: snapshot='no' has no meaning for a revert")
    return overlays


@dataclass(frozen=True)
class SnapshotRequest:
    name: str | None
    description: str | None
    overlays: dict[str, str] = field(default_factory=dict)
    excluded: frozenset[str] = frozenset()


def snapshot_request(text: bytes) -> SnapshotRequest:
    """libvirt's <domainsnapshot>: name, description, and per disk an overlay or snapshot='no'."""
    root = parse_secure(text, "snapshot XML")
    if root.tag != "domainsnapshot":
        raise BadInput(f"snapshot XML: expected <domainsnapshot>, found <{root.tag}>")
    memory = root.find("memory")
    if memory is not None and memory.get("snapshot", "no") != "no":
        # a disk-only snapshot taken instead would drop the guest's memory without a word
        raise BadInput(
            f"snapshot XML: <memory snapshot={memory.get('snapshot')!r}> asks for the guest's "
            "memory state, and snapledger takes disk-only snapshots: use <memory "
            "snapshot='no'/> (or leave <memory> out), or save the memory with 'virsh save' first"
        )
    for unsupported in ("inactiveDomain", "cookie"):
        if root.find(unsupported) is not None:
            raise BadInput(f"snapshot XML: <{unsupported}> is not supported (disk-only snapshots)")
    overlays, excluded = _disk_sources(root, "snapshot XML")
    return SnapshotRequest(
        root.findtext("name"), root.findtext("description"), overlays, frozenset(excluded)
    )


def domain_xml(text: bytes) -> str:
    root = parse_secure(text, "domain XML")
    if root.tag != "domain":
        raise BadInput(f"domain XML: expected <domain>, found <{root.tag}>")
    return str(etree.tostring(root, encoding="unicode"))
