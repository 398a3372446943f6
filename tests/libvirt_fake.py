"""An in-memory libvirt for the unit tests: LibvirtPort over a SimulatedStorage.

Domains have a persistent definition (sources only) and, while running, live sources; the live
XML carries each disk's <backingStore> chain as the simulated files say. Block jobs advance one
step per `block_job` call and change the simulated files the way QEMU does (a commit drops the top
from the chain and re-points the image above it; a pull re-points the active image). Faults:
`fail_jobs` (a job vanishes without doing anything, as a failed job does), `down` (every call
fails, as while libvirtd restarts), `down_after` (that many calls succeed first) and `down_on`
(from the n-th call of one kind). Jobs go on while libvirt is down, as QEMU's do.
`JobLockedStorage` adds QEMU's image lock during a non-active commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from snapledger.adapters.libvirt.port import BlockJob, LibvirtFailure, NoSuchDomain
from snapledger.adapters.libvirt.xml import disk_sources, domain_name, parse_snapshot
from snapledger.adapters.libvirt.xml_input import parse_secure
from snapledger.adapters.storage.simulated import SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import ImageInUse
from snapledger.domain.images import ImageFacts


@dataclass
class FakeDomain:
    name: str
    sources: dict[str, str]  # the persistent definition's disk sources
    persistent: bool = True
    running: bool = False
    live: dict[str, str] = field(default_factory=dict)
    extra_disks: str = ""  # XML of disks snapledger leaves alone
    id: int = 1  # libvirt's id of the running domain: a new one at every start


@dataclass
class FakeJob:
    kind: str
    top: str
    base: str | None
    steps_left: int = 2


class FakeLibvirt:
    uri = "test:///fake"

    def __init__(self, storage: SimulatedStorage) -> None:
        self.storage = storage
        self.domains: dict[str, FakeDomain] = {}
        self.snapshots: dict[str, list[str]] = {}
        self.jobs: dict[tuple[str, str], FakeJob] = {}
        self.fail_jobs = False
        self.down = False
        self.down_after: int | None = None
        self._down_on: tuple[str, int] | None = None
        self._down_base = 0
        self.next_id = 2
        self.crash_after: str | None = None  # the process dies right after this call is done
        self.stop_during_job = False  # the next look at a running job finds the domain destroyed
        self.on_job_poll: Callable[[], None] | None = None  # run once, at the next look at a job
        self.refuse_start: str | None = None  # why starting a domain fails (libvirt's words)
        self.calls: list[str] = []
        self.bandwidths: list[int] = []  # the limit each block job was started with

    # ---- what a test does ------------------------------------------------------------

    @property
    def down_on(self) -> tuple[str, int] | None:
        """(call, n): down from the n-th such call after this was set."""
        return self._down_on

    @down_on.setter
    def down_on(self, value: tuple[str, int] | None) -> None:
        self._down_on = value
        self._down_base = self.calls.count(value[0]) if value is not None else 0

    def add(self, name: str, sources: dict[str, str], *, running: bool = True,
            persistent: bool = True, extra_disks: str = "") -> None:
        self.domains[name] = FakeDomain(name, dict(sources), persistent, running,
                                        dict(sources) if running else {}, extra_disks)

    def chain(self, domain: str, disk: str) -> list[str]:
        """The disk's chain as QEMU reads it (no image lock is in QEMU's own way)."""
        out = [self.domains[domain].live[disk]]
        while (below := SimulatedStorage.inspect(self.storage, out[-1]).backing) is not None:
            out.append(below)
        return out

    # ---- the port --------------------------------------------------------------------

    def _enter(self, what: str) -> None:
        self.calls.append(what)
        if self.down_after is not None:
            self.down_after -= 1
            if self.down_after < 0:
                self.down, self.down_after = True, None
        if self.down_on is not None and self.down_on[0] == what:
            if self.calls.count(what) - self._down_base >= self.down_on[1]:
                self.down, self.down_on = True, None
        if self.down:
            raise LibvirtFailure(f"libvirt {what}: Cannot write data: Broken pipe")

    def _dom(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise NoSuchDomain(f"no libvirt domain named {name!r} at {self.uri}")
        return self.domains[name]

    def is_running(self, domain: str) -> bool:
        self._enter("isActive")
        return self._dom(domain).running

    def is_persistent(self, domain: str) -> bool:
        self._enter("isPersistent")
        return self._dom(domain).persistent

    def xml(self, domain: str, inactive: bool = False) -> str:
        self._enter("XMLDesc")
        dom = self._dom(domain)
        live = dom.running and not inactive
        sources = dom.live if live else dom.sources
        disks = []
        for target, path in sorted(sources.items()):
            backing = ""
            if live:
                for below in reversed(self.chain(domain, target)[1:]):
                    backing = f"<backingStore type='file'><format type='qcow2'/><source file='{below}'/>{backing}</backingStore>"
            disks.append(
                f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file='{path}'/>{backing}<target dev='{target}' bus='virtio'/></disk>"
            )
        ident = f" id='{dom.id}'" if live else ""
        return (f"<domain type='qemu'{ident}><name>{domain}</name><memory unit='KiB'>65536</memory>"
                f"<devices>{''.join(disks)}{dom.extra_disks}</devices></domain>")

    def running_domains(self) -> list[str]:
        self._enter("listAllDomains")
        return sorted(n for n, d in self.domains.items() if d.running)

    def snapshot_xmls(self, domain: str) -> list[str]:
        self._enter("listAllSnapshots")
        self._dom(domain)
        return list(self.snapshots.get(domain, []))

    def delete_snapshot_metadata(self, domain: str, name: str) -> None:
        self._enter("snapshot delete")
        kept = [x for x in self.snapshots.get(domain, []) if parse_snapshot(x).name != name]
        self.snapshots[domain] = kept

    def create_disk_snapshot(self, domain: str, snapshot_xml: str) -> None:
        self._enter("snapshotCreateXML")
        dom = self._dom(domain)
        if not dom.running:
            raise LibvirtFailure("libvirt snapshotCreateXML: domain is not running")
        root = parse_secure(snapshot_xml.encode(), "snapshot")
        moves = {}
        for disk in root.findall("disks/disk"):
            if disk.get("snapshot") == "external":
                source = disk.find("source")
                assert source is not None
                path = str(source.get("file"))
                name = str(disk.get("name"))
                if self.storage.inspect(path).backing != dom.live[name]:
                    raise LibvirtFailure(f"libvirt: {path} is not backed by {dom.live[name]}")
                moves[name] = path
        dom.live.update(moves)
        if dom.persistent:
            dom.sources.update(moves)
        self._maybe_crash("snapshotCreateXML")

    def define(self, xml: str) -> None:
        self._enter("defineXML")
        name = domain_name(xml)
        assert name is not None
        root = parse_secure(xml.encode(), "domain")
        assert root.find(".//alias") is None and root.get("id") is None
        if name in self.domains:
            self.domains[name].sources = disk_sources(xml)
            self.domains[name].persistent = True
        else:
            self.domains[name] = FakeDomain(name, disk_sources(xml))
        self._maybe_crash("defineXML")

    def start(self, domain: str) -> None:
        self._enter("create")
        if self.refuse_start is not None:
            raise LibvirtFailure(self.refuse_start)
        dom = self._dom(domain)
        dom.running, dom.live = True, dict(dom.sources)
        dom.id, self.next_id = self.next_id, self.next_id + 1
        self._maybe_crash("create")

    def create(self, xml: str) -> None:
        self._enter("createXML")
        if self.refuse_start is not None:
            raise LibvirtFailure(self.refuse_start)
        name = domain_name(xml)
        assert name is not None
        sources = disk_sources(xml)
        self.domains[name] = FakeDomain(name, sources, False, True, dict(sources), id=self.next_id)
        self.next_id += 1
        self._maybe_crash("createXML")

    def destroy(self, domain: str) -> None:
        self._enter("destroy")
        dom = self._dom(domain)
        dom.running, dom.live = False, {}
        for key in [k for k in self.jobs if k[0] == domain]:
            del self.jobs[key]  # QEMU's block jobs end with it, cancelled (no pivot)
        if not dom.persistent:
            del self.domains[domain]
        self._maybe_crash("destroy")

    def block_commit(
        self, domain: str, disk: str, base: str, top: str | None, bandwidth: int = 0
    ) -> None:
        self._enter("blockCommit")
        self.bandwidths.append(bandwidth)
        dom = self._dom(domain)
        chain = self.chain(domain, disk)
        top = top or chain[0]
        if chain.index(top) + 1 >= len(chain) or chain[chain.index(top) + 1] != base:
            raise LibvirtFailure(f"libvirt blockCommit: {base} is not below {top}")
        kind = "active-commit" if top == dom.live[disk] else "commit"
        self.jobs[(domain, disk)] = FakeJob(kind, top, base)

    def block_pull(self, domain: str, disk: str, base: str | None, bandwidth: int = 0) -> None:
        self._enter("blockRebase")
        self.bandwidths.append(bandwidth)
        self._dom(domain)
        self.jobs[(domain, disk)] = FakeJob("pull", self.domains[domain].live[disk], base)

    def block_job(self, domain: str, disk: str) -> BlockJob | None:
        self._enter("blockJobInfo")
        job = self.jobs.get((domain, disk))
        if job is None:
            return None
        if self.on_job_poll is not None:  # another process acts while the job runs
            hook, self.on_job_poll = self.on_job_poll, None
            hook()
            job = self.jobs.get((domain, disk))
            if job is None:
                return None
        if self.stop_during_job:  # the domain is destroyed while the job runs
            self.stop_during_job = False
            self.destroy(domain)
            raise LibvirtFailure("libvirt blockJobInfo: Requested operation is not valid: "
                                 "domain is not running")
        if self.fail_jobs:
            del self.jobs[(domain, disk)]
            return None
        if job.steps_left > 0:
            job.steps_left -= 1
            return BlockJob(job.kind, 2 - job.steps_left - 1, 2)
        if job.kind == "active-commit":
            return BlockJob(job.kind, 2, 2)  # ready: waits for the pivot
        del self.jobs[(domain, disk)]
        self._finish(domain, disk, job)
        return None

    def _finish(self, domain: str, disk: str, job: FakeJob) -> None:
        if job.kind == "pull":
            fmt = self.storage.inspect(job.base).format if job.base else None
            self.storage.pull(job.top, job.base, fmt, fmt="qcow2")
            return
        assert job.base is not None
        self.storage.commit(job.top, job.base, fmt="qcow2")
        chain = self.chain(domain, disk)
        above = chain[chain.index(job.top) - 1] if chain.index(job.top) > 0 else None
        if above is not None:
            self.storage.rebase_unsafe(above, job.base, "qcow2", fmt="qcow2")

    def pivot(self, domain: str, disk: str) -> None:
        self._enter("pivot")
        job = self.jobs.get((domain, disk))
        if job is None or job.kind != "active-commit" or job.steps_left > 0:
            raise LibvirtFailure("libvirt pivot: block job 'vda' not ready for pivot yet")
        del self.jobs[(domain, disk)]
        assert job.base is not None
        self.storage.commit(job.top, job.base, fmt="qcow2")
        dom = self.domains[domain]
        dom.live[disk] = job.base
        if dom.persistent:
            dom.sources[disk] = job.base
        self._maybe_crash("pivot")

    def _maybe_crash(self, what: str) -> None:
        if self.crash_after == what:
            self.crash_after = None
            raise SimulatedCrash(f"the process died right after {what}")

    def abort_job(self, domain: str, disk: str) -> None:
        self._enter("blockJobAbort")
        self.jobs.pop((domain, disk), None)


class JobLockedStorage(SimulatedStorage):
    """SimulatedStorage with QEMU's lock on the image a non-active commit job commits (set
    `libvirt`): QEMU unshares consistent reads of it while the job runs, so qemu-img can't read it
    (QEMU 7.2, measured: `qemu-img map -U` fails with 'Failed to get "consistent read" lock')."""

    libvirt: FakeLibvirt | None = None

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        jobs = self.libvirt.jobs.values() if self.libvirt is not None else ()
        if any(job.kind == "commit" and job.top == path for job in jobs):
            raise ImageInUse(
                f'another process still holds {path} (qemu-img map: Failed to get "consistent read" lock)'
            )
        return super().inspect(path, fmt)


def virsh_snapshot_xml(name: str, parent: str | None, domain: str, overlays: dict[str, str],
                       frozen: dict[str, str], created: int, description: str | None = None) -> str:
    """libvirt's metadata of a disk-only external snapshot, as `virsh snapshot-create-as
    --disk-only` leaves it."""
    root = etree.Element("domainsnapshot")
    etree.SubElement(root, "name").text = name
    if description:
        etree.SubElement(root, "description").text = description
    etree.SubElement(root, "state").text = "disk-snapshot"
    if parent:
        etree.SubElement(etree.SubElement(root, "parent"), "name").text = parent
    etree.SubElement(root, "creationTime").text = str(created)
    etree.SubElement(root, "memory", snapshot="no")
    disks = etree.SubElement(root, "disks")
    for target, path in overlays.items():
        disk = etree.SubElement(disks, "disk", name=target, snapshot="external", type="file")
        etree.SubElement(disk, "source", file=path)
    dom = etree.SubElement(root, "domain", type="qemu")
    etree.SubElement(dom, "name").text = domain
    devices = etree.SubElement(dom, "devices")
    for target, path in frozen.items():
        disk = etree.SubElement(devices, "disk", type="file", device="disk")
        etree.SubElement(disk, "driver", name="qemu", type="qcow2")
        etree.SubElement(disk, "source", file=path)
        etree.SubElement(disk, "target", dev=target, bus="virtio")
    return str(etree.tostring(root, encoding="unicode"))
