"""Snapledger's VMs that are libvirt domains: what the service asks of libvirt, through LibvirtPort.

- `shape` adds the hypervisor's steps to a plan before it is recorded: a live snapshot switches
  the running domain onto the new overlays in one atomic step (`SwitchDisks`); a revert stops a
  running domain first (`StopDomain`); whenever the disks change while the domain is shut off,
  and at every revert, the domain is redefined with the ledger's active images as its sources
  (`DefineDomain`, placed before any file is deleted); `revert --running` ends with
  `StartDomain`, so that a revert finished by `recover` starts the domain too.
- `storage(vm, inner)` routes each storage step: an image in the backing chain of a running
  domain's disk is merged by a libvirt block job (active commit with pivot, non-active commit,
  pull into the active image); every other image goes to `inner` (qemu-img) as before.
- `findings` compares libvirt's disk sources with the ledger (drift).
- `adopt_libvirt` reads a domain and its libvirt snapshot metadata into the ledger.

This module imports no libvirt: `connect` (adapters/libvirt_domains.py in the command line, a fake
in the unit tests) does, and only when a VM bound to libvirt is acted on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from snapledger.domain.errors import BadInput, Refused, StorageError
from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.steps import (
    Commit,
    DefineDomain,
    Plan,
    Pull,
    SetActive,
    StartDomain,
    Step,
    StopDomain,
    SwitchDisks,
)
from snapledger.domain.vm import VirtualMachine

from .libvirt_port import BlockJob, LibvirtFailure, LibvirtPort, NoSuchDomain
from .libvirt_xml import (
    LibvirtSnapshot,
    disk_sources,
    domain_disks,
    parse_snapshot,
    snapshot_request_xml,
    with_sources,
)
from .storage_port import Dependants, Sharing, StoragePort

if TYPE_CHECKING:
    from .service import Snapledger

DEFAULT_URI = "qemu:///system"
# A test knob, never set in normal use: a bandwidth limit (bytes per second) for every block job
# snapledger starts, so that the system tests can interrupt a live merge reliably
# (tests/system/test_libvirt_restart.py). Unset, empty or 0: no limit.
TEST_JOB_BANDWIDTH_ENV = "SNAPLEDGER_TEST_JOB_BANDWIDTH"


class LiveStepImpossible(Refused):
    """A planned step can't be done while the domain runs (a pull into a backing file of a
    running disk: libvirt pulls only into the active image)."""


def job_bandwidth_from_env(environ: Mapping[str, str]) -> int:
    """The block jobs' bandwidth limit the test knob asks for (bytes per second), or 0."""
    value = environ.get(TEST_JOB_BANDWIDTH_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise BadInput(f"{TEST_JOB_BANDWIDTH_ENV} must be a number of bytes per second, not {value!r}")
    return int(value)


def real_connect(uri: str) -> LibvirtPort:
    from . import extras

    extras.require(extras.LIBVIRT)  # without libvirt-python: one line naming the pip install
    from .libvirt_domains import LibvirtDomains  # libvirt is imported here, on first use

    return LibvirtDomains(uri)


@dataclass
class LiveDisk:
    domain: str
    disk: str
    chain: list[str]  # active first


class LibvirtHypervisor:
    def __init__(
        self,
        connect: Callable[[str], LibvirtPort] = real_connect,
        *,
        poll_seconds: float = 0.25,
        job_timeout: float = 6 * 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        job_bandwidth: int = 0,
    ) -> None:
        self.connect = connect
        self.poll_seconds = poll_seconds
        self.job_timeout = job_timeout
        self.sleep = sleep
        # bytes per second for every block job started; 0 (the default) is no limit. Only the
        # tests set it (TEST_JOB_BANDWIDTH_ENV), to make a live merge slow enough to interrupt.
        self.job_bandwidth = job_bandwidth
        self._ports: dict[str, LibvirtPort] = {}
        # why a StartDomain step's domain did not start, by domain: reported by `after`
        self._start_failures: dict[str, str] = {}

    # ---- binding ---------------------------------------------------------------------

    def port_for(self, uri: str) -> LibvirtPort:
        if uri not in self._ports:
            self._ports[uri] = self.connect(uri)
        return self._ports[uri]

    def port(self, vm: VirtualMachine) -> tuple[LibvirtPort, str]:
        assert vm.libvirt is not None
        return self.port_for(vm.libvirt["uri"]), vm.libvirt["domain"]

    def live_sources(self, vm: VirtualMachine) -> dict[str, str]:
        """libvirt's disk sources now: the running definition if the domain runs, else the
        persistent one."""
        port, domain = self.port(vm)
        running = port.is_running(domain)
        return disk_sources(port.xml(domain, inactive=not running))

    # ---- the service's questions -----------------------------------------------------

    def findings(self, vm: VirtualMachine, ignore: str | None = None) -> list[str]:
        """Where libvirt's idea of the disks differs from the ledger's: drift (but for disk
        `ignore`, which a swap-disk is recording)."""
        try:
            sources = self.live_sources(vm)
        except NoSuchDomain as gone:
            return [f"libvirt: {gone}"]
        out = []
        for disk, active in sorted(vm.disks.items()):
            seen = sources.get(disk)
            if seen != active and disk != ignore:
                out.append(
                    f"{disk}: libvirt's domain uses {seen or 'no file'}, the ledger says {active}"
                    + (f" (changed behind snapledger's back? record it with 'snapledger swap-disk "
                       f"{vm.name} {disk} {seen}')" if seen else "")
                )
        return out

    def domain_xml(self, vm: VirtualMachine) -> str:
        """The definition now (persistent if the domain has one), as a snapshot records it."""
        port, domain = self.port(vm)
        return port.xml(domain, inactive=True)

    def check_live(self, vm: VirtualMachine, plan: Plan) -> None:
        """Raise LiveStepImpossible if the domain runs and `plan` has a step libvirt can't do
        live (a pull into a backing file of a running disk)."""
        port, domain = self.port(vm)
        if port.is_running(domain):
            self._check_live(vm, list(plan.steps))

    def shape(
        self, vm: VirtualMachine, plan: Plan, target: str | None = None, start: bool = False
    ) -> Plan:
        """`plan` with the hypervisor's steps added (see the module's docstring)."""
        port, domain = self.port(vm)
        running = port.is_running(domain)
        persistent = port.is_persistent(domain)
        steps: list[Step] = list(plan.steps)
        final = dict(vm.disks)
        for step in steps:
            if isinstance(step, SetActive):
                final[step.disk] = step.path
        changed = {d: p for d, p in final.items() if vm.disks[d] != p}
        sets = [i for i, s in enumerate(steps) if isinstance(s, SetActive)]
        if running:
            self._check_live(vm, steps)
        if plan.kind == "revert":
            if not persistent and not start:
                raise BadInput(
                    f"domain {domain!r} is transient: it exists only while it runs, so a revert "
                    "must start it again (--running)"
                )
            snap_xml = vm.snapshot(target).domain_xml if target is not None else None
            base_xml = snap_xml or port.xml(domain, inactive=True)
            define = DefineDomain(domain, with_sources(base_xml, final), persistent)
            steps.insert(sets[-1] + 1 if sets else len(steps), define)
            if running:
                steps.insert(0, StopDomain(domain))
            if start:
                steps.append(StartDomain(domain, "" if persistent else define.xml))
        elif running and plan.kind == "snapshot" and changed:
            switch = SwitchDisks(domain, tuple(sorted(changed.items())))
            steps.insert(sets[0], switch)
        elif running and changed and persistent:
            # an active commit: libvirt rewrites the persistent definition at the pivot, but if the
            # domain is shut off before it (the job is cancelled), recover commits with qemu-img
            # and the definition must not be left on the deleted top
            define = DefineDomain(domain, with_sources(port.xml(domain, inactive=True), final))
            steps.insert(sets[-1] + 1, define)
        elif not running and changed:
            if not persistent:
                raise BadInput(f"domain {domain!r} is neither running nor defined")
            define = DefineDomain(domain, with_sources(port.xml(domain, inactive=True), final))
            steps.insert(sets[-1] + 1, define)
        return replace(plan, steps=tuple(steps))

    def _check_live(self, vm: VirtualMachine, steps: list[Step]) -> None:
        live = self._live_disks(vm)
        for step in steps:
            if isinstance(step, Pull):
                where = _find(live, step.image)
                if where is not None and where.chain[0] != step.image:
                    raise LiveStepImpossible(
                        f"can't pull into {step.image} while domain {where.domain!r} runs: it is "
                        f"a backing file of {where.disk}, and libvirt pulls only into the active "
                        "image; use --strategy commit, or shut the domain down"
                    )

    def storage(self, vm: VirtualMachine, inner: StoragePort) -> LibvirtStorage:
        return LibvirtStorage(inner, self, vm)

    def carry_out(self, vm: VirtualMachine, step: Step) -> None:
        """A hypervisor step, or see from libvirt that it was done before a crash."""
        port, _ = self.port(vm)
        if isinstance(step, SwitchDisks):
            self._switch(port, step)
        elif isinstance(step, StopDomain):
            try:
                if port.is_running(step.domain):
                    port.destroy(step.domain)
            except NoSuchDomain:
                pass  # a transient domain is gone once stopped
        elif isinstance(step, DefineDomain):
            if not step.persistent:
                return  # a transient domain is started from the XML (after the operation)
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
        elif isinstance(step, StartDomain):
            self._start(port, step)
        else:
            raise StorageError(f"{step.action} is not a hypervisor step")

    def _start(self, port: LibvirtPort, step: StartDomain) -> None:
        """Start the domain unless it runs. A domain that won't start (too little memory, say)
        does not fail the operation: its disks are final and recorded; `after` reports why."""
        self._start_failures.pop(step.domain, None)
        if port_running(port, step.domain):
            return
        try:
            if step.xml:
                port.create(step.xml)
            else:
                port.start(step.domain)
        except LibvirtFailure as error:
            self._start_failures[step.domain] = str(error)

    def _switch(self, port: LibvirtPort, step: SwitchDisks) -> None:
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

    def after(self, vm: VirtualMachine, plan: Plan, target: str | None) -> list[str]:
        """What follows a finished operation (also one finished by `recover`): forget libvirt's
        metadata of a snapshot snapledger deleted; say whether a domain the operation started
        runs. Returns notes for the user."""
        port, domain = self.port(vm)
        notes = []
        if plan.kind == "delete" and target is not None:
            if target in self.metadata_names(port, domain):
                port.delete_snapshot_metadata(domain, target)
                notes.append(f"libvirt's metadata of snapshot {target} was removed too")
        if any(isinstance(step, StartDomain) for step in plan.steps):
            failure = self._start_failures.pop(domain, None)
            if failure is not None or not port_running(port, domain):
                raise LibvirtFailure(
                    f"the {plan.kind} is done and recorded, but domain {domain} did not start: "
                    f"{failure or 'it is not running'}"
                )
            notes.append(f"domain {domain} is running")
        return notes

    @staticmethod
    def metadata_names(port: LibvirtPort, domain: str) -> set[str]:
        try:
            return {parse_snapshot(x).name for x in port.snapshot_xmls(domain)}
        except NoSuchDomain:
            return set()

    def swap(self, vm: VirtualMachine, disk: str, path: str) -> str | None:
        """swap-disk on a libvirt VM: libvirt already uses `path` (changed with virsh), or the
        shut-off domain is redefined with it. A running domain's disk can't be swapped here.
        Returns the persistent definition it replaced (None if it defined nothing)."""
        port, domain = self.port(vm)
        running = port.is_running(domain)
        xml = port.xml(domain, inactive=not running)
        if disk_sources(xml).get(disk) == path:
            if running and port.is_persistent(domain):
                inactive = port.xml(domain, inactive=True)
                if disk_sources(inactive).get(disk) != path:
                    port.define(with_sources(inactive, {disk: path}))
                    return inactive
            return None
        if running:
            raise BadInput(
                f"domain {domain!r} is running on {disk_sources(xml).get(disk)}: swap its disk with "
                f"virsh (blockcopy --pivot) or shut it down first, then record it with swap-disk"
            )
        inactive = port.xml(domain, inactive=True)
        port.define(with_sources(inactive, {disk: path}))
        return inactive

    def restore_definition(self, vm: VirtualMachine, xml: str) -> None:
        """Put back a persistent definition `swap` replaced (its change was not recorded)."""
        port, _ = self.port(vm)
        port.define(xml)

    # ---- running chains --------------------------------------------------------------

    def _live_disks(self, vm: VirtualMachine) -> list[LiveDisk]:
        """The chain of every file-backed disk of every running domain on the VM's connection."""
        port, _ = self.port(vm)
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


def port_running(port: LibvirtPort, domain: str) -> bool:
    try:
        return port.is_running(domain)
    except NoSuchDomain:
        return False


def _find(live: list[LiveDisk], path: str) -> LiveDisk | None:
    for disk in live:
        if path in disk.chain:
            return disk
    return None


class LibvirtStorage:
    """StoragePort for one libvirt VM's operation: merges of images a running QEMU has open go to
    libvirt block jobs, everything else to `inner`."""

    def __init__(self, inner: StoragePort, hypervisor: LibvirtHypervisor, vm: VirtualMachine) -> None:
        self.inner = inner
        self.hypervisor = hypervisor
        self.vm = vm
        self.port, self.domain = hypervisor.port(vm)

    @property
    def progress(self) -> Callable[[float], None] | None:
        return getattr(self.inner, "progress", None)

    # ---- passed through --------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def resolve(self, path: str) -> str:
        return self.inner.resolve(path)

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        return self.inner.inspect(path, fmt)

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        return self.inner.inspect_chain(path, within, fmt)

    def scan(self, directories: Iterable[str]) -> Dependants:
        return self.inner.scan(directories)

    def remove_unfinished(self, path: str) -> bool:
        return self.inner.remove_unfinished(path)

    def repair(self, path: str, *, fmt: str) -> None:
        if self._live(path) is None:  # a running domain's image: QEMU keeps its own metadata
            self.inner.repair(path, fmt=fmt)

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        if self._live(image) is not None:
            # merged by a block job inside the running QEMU, which no restart of libvirtd or
            # death of snapledger stops half-written; the file on disk lags behind QEMU's
            # caches, so it is not what to compare
            return True
        return self.inner.reads_same_over(image, fmt, backing, backing_format)

    def sharing(self, path: str) -> Sharing:
        """An image the VM's own running domain has open is libvirt's to change (block jobs):
        QEMU's locks on it are that domain's, not another process's."""
        seen = self.inner.sharing(path)
        if self._live(path) is None:
            return seen
        return Sharing(links=seen.links, writer=None, reader=None)

    def create_overlay(self, path: str, backing: str, backing_format: str, virtual_size: int) -> None:
        self.inner.create_overlay(path, backing, backing_format, virtual_size)

    # ---- routed ----------------------------------------------------------------------

    def _live(self, path: str) -> LiveDisk | None:
        return _find(self.hypervisor._live_disks(self.vm), path)

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        live = self._live(top)
        if live is None:
            if self._committed_live_before(top, base):
                return  # a block job did it before a crash; qemu-img must not do it again
            self.inner.commit(top, base, fmt=fmt)
            return
        at = live.chain.index(top)
        if at + 1 >= len(live.chain) or live.chain[at + 1] != base:
            raise StorageError(f"{base} is not the backing file of {top} in {live.domain}'s {live.disk}")
        active = at == 0
        job = self.port.block_job(live.domain, live.disk)
        if job is None:
            self.port.block_commit(
                live.domain, live.disk, base, None if active else top, self.hypervisor.job_bandwidth
            )
        elif job.kind not in ("commit", "active-commit"):
            raise StorageError(f"{live.domain}'s {live.disk} runs another block job ({job.kind})")
        self._wait(live, pivot=active)
        after = self._live_chain(live)
        if top in after or base not in after:
            raise StorageError(
                f"block commit of {top} into {base} did not finish: {live.domain}'s {live.disk} "
                f"still reads {' <- '.join(reversed(after))}"
            )

    def await_job(self, step: Step) -> None:
        """Before `recover` checks and redoes a merge step: a block job still running on its disk
        that ends by itself (a non-active commit or a pull, started before the process died or
        libvirtd restarted) is waited for. While a non-active commit runs, QEMU keeps the image
        it commits locked against reads, so qemu-img could not even inspect it. An active commit
        is left to `commit`, which waits for it and pivots."""
        if isinstance(step, Commit):
            path = step.top
        elif isinstance(step, Pull):
            path = step.image
        else:
            return
        live = self._live(path)
        if live is None:
            return
        job = self.port.block_job(live.domain, live.disk)
        if job is not None and job.kind in ("commit", "pull"):
            self._wait(live, pivot=False)

    def _committed_live_before(self, top: str, base: str) -> bool:
        """After a crash: libvirt no longer reads `top` through a disk whose ledger chain holds
        it, and reads `base` instead: a block job committed and dropped `top` already."""
        images = self.vm.images
        try:
            sources = self.hypervisor.live_sources(self.vm)
        except NoSuchDomain as gone:
            if top in self.vm.disks.values():
                # An active commit whose domain vanished (a transient one, destroyed): it may
                # have pivoted first, and the guest written into `base` since. The files can't
                # tell, and committing `top` again would overwrite those writes.
                raise Refused(
                    f"{gone}: snapledger can't tell whether the live commit of {top} into {base} "
                    "pivoted before the domain went (then the guest's later writes are in "
                    f"{base} only). Nothing was done. Start the domain again on the image it last "
                    f"ran on (its definition is in `snapledger show {self.vm.name} --json`), then "
                    "run the command again"
                ) from None
            return False
        for disk, active in self.vm.disks.items():
            chain: list[str] = []
            path: str | None = active
            while path is not None and path in images:
                chain.append(path)
                path = images[path].backing
            if top not in chain or disk not in sources:
                continue
            try:
                source = sources[disk]
                known = images.get(source)
                # the ledger's format if it knows the file, else libvirt's: it runs qcow2 only
                fmt = known.facts.format if known is not None else "qcow2"
                now = [f.path for f in self.inner.inspect_chain(source, fmt=fmt)]
            except StorageError:
                continue
            if top not in now and base in now:
                return True
        return False

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        live = self._live(image)
        if live is None:
            self.inner.pull(image, new_backing, new_backing_format, fmt=fmt)
            return
        if live.chain[0] != image:
            raise StorageError(
                f"can't pull into {image}: it is a backing file of {live.domain}'s {live.disk}, "
                "and libvirt pulls only into the active image"
            )
        if new_backing is not None and new_backing not in live.chain:
            raise StorageError(f"{new_backing} is not below {image} in {live.domain}'s {live.disk}")
        job = self.port.block_job(live.domain, live.disk)
        if job is None:
            self.port.block_pull(live.domain, live.disk, new_backing, self.hypervisor.job_bandwidth)
        elif job.kind != "pull":
            raise StorageError(f"{live.domain}'s {live.disk} runs another block job ({job.kind})")
        self._wait(live, pivot=False)
        after = self._live_chain(live)
        expected = after[1] if len(after) > 1 else None
        if expected != new_backing:
            raise StorageError(
                f"block pull into {image} did not finish: it is backed by {expected or 'nothing'}"
            )

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        live = self._live(image)
        if live is not None:
            raise StorageError(f"{image} is open by running domain {live.domain}: not rebased")
        self.inner.rebase_unsafe(image, new_backing, new_backing_format, fmt=fmt)

    def delete(self, path: str) -> None:
        live = self._live(path)
        if live is not None:
            raise StorageError(f"{path} is open by running domain {live.domain} ({live.disk}): not deleted")
        self.inner.delete(path)

    # ---- block jobs ------------------------------------------------------------------

    def _live_chain(self, live: LiveDisk) -> list[str]:
        for disk in domain_disks(self.port.xml(live.domain)):
            if disk.target == live.disk and disk.source:
                return [disk.source, *disk.chain]
        return []

    def _wait(self, live: LiveDisk, pivot: bool) -> None:
        deadline = time.monotonic() + self.hypervisor.job_timeout
        pause = 0.005  # short jobs end in milliseconds: look again soon, then less often
        while True:
            job: BlockJob | None = self.port.block_job(live.domain, live.disk)
            if job is None:
                if self.progress is not None:
                    self.progress(1.0)
                return  # finished; the caller reads the chain to see how
            if job.end and self.progress is not None:
                self.progress(min(job.cur / job.end, 1.0))
            if pivot and job.ready:
                try:
                    self.port.pivot(live.domain, live.disk)
                    if self.progress is not None:
                        self.progress(1.0)
                    return
                except LibvirtFailure as error:
                    if "not ready" not in str(error):
                        raise
            if time.monotonic() > deadline:
                self.port.abort_job(live.domain, live.disk)
                raise StorageError(
                    f"block job on {live.domain}'s {live.disk} timed out after "
                    f"{self.hypervisor.job_timeout:g} s and was cancelled"
                )
            self.hypervisor.sleep(pause)
            pause = min(pause * 2, self.hypervisor.poll_seconds)


# ---- adopt --libvirt -----------------------------------------------------------------


@dataclass
class AdoptReport:
    disks: dict[str, str]
    left_alone: list[str]
    imported: list[str]
    notes: list[str] = field(default_factory=list)


def _ordered(snapshots: list[LibvirtSnapshot]) -> list[LibvirtSnapshot]:
    """Parents before children (by creation time among siblings)."""
    by_name = {s.name: s for s in snapshots}
    out: list[LibvirtSnapshot] = []
    placed: set[str] = set()

    def place(snap: LibvirtSnapshot, path: tuple[str, ...] = ()) -> None:
        if snap.name in placed:
            return
        if snap.name in path:
            raise BadInput(f"libvirt's snapshot metadata loops at {snap.name!r}")
        if snap.parent in by_name:
            place(by_name[snap.parent], (*path, snap.name))
        placed.add(snap.name)
        out.append(snap)

    for snap in sorted(snapshots, key=lambda s: (s.created or 0, s.name)):
        place(snap)
    return out


def adopt_libvirt(
    ledger: Snapledger,
    hypervisor: LibvirtHypervisor,
    name: str,
    uri: str = DEFAULT_URI,
    pools: Iterable[str] = (),
    keep_metadata: bool = False,
) -> AdoptReport:
    """Record libvirt domain `name`: its file-backed qcow2 disks and their chains, and its
    external snapshots from libvirt's metadata as history. libvirt's metadata of the imported
    snapshots is then removed, unless `keep_metadata`: libvirt 9.0 deletes (merges) external
    snapshots itself, and virsh must not act on a history snapledger manages (docs/libvirt.md)."""
    port = hypervisor.port_for(uri)
    running = port.is_running(name)
    live_xml = port.xml(name, inactive=not running)
    definition = port.xml(name, inactive=True)
    tracked: dict[str, str] = {}
    left_alone: list[str] = []
    for disk in domain_disks(live_xml):
        reason = disk.left_alone_reason()
        if reason is None:
            assert disk.source is not None
            tracked[disk.target] = disk.source
        else:
            left_alone.append(reason)
    if not tracked:
        raise BadInput(
            f"domain {name!r} has no file-backed qcow2 disk to track"
            + (f" ({'; '.join(left_alone)})" if left_alone else "")
        )
    snapshots = _ordered([parse_snapshot(x) for x in port.snapshot_xmls(name)])
    notes: list[str] = []
    records: list[dict[str, Any]] = []
    origins: dict[str, Origin] = {}
    overlays: set[str] = set()
    for snap in snapshots:
        for target, (mode, overlay) in snap.disks.items():
            if mode == "internal":
                raise Refused(
                    f"snapshot {snap.name!r} of {name!r} is internal ({target}): snapledger keeps "
                    "external snapshots only; delete it with virsh first"
                )
            if mode == "external" and overlay and target in tracked:
                overlays.add(overlay)
        if snap.memory not in (None, "no"):
            notes.append(f"snapshot {snap.name}: its memory state is not imported (disks only)")
    for snap in snapshots:
        frozen = {}
        for target, (mode, _overlay) in snap.disks.items():
            if mode != "external" or target not in tracked:
                continue
            path = snap.domain_sources.get(target)
            if path is None:
                raise Refused(f"libvirt's metadata of snapshot {snap.name!r} does not say what {target} was")
            frozen[target] = path
            if path not in overlays:
                origins[path] = Origin.ADOPTED  # the disk as it was before its first snapshot
        if not frozen:
            notes.append(f"snapshot {snap.name}: captures no tracked disk, not imported")
            continue
        records.append({
            "name": snap.name,
            "parent": snap.parent,
            "disks": frozen,
            "created": _created(snap.created),
            "domain_xml": snap.domain,
            "description": snap.description,
        })
    imported_names = {r["name"] for r in records}
    for record in records:  # a parent that was not imported: its nearest imported ancestor
        parent = record["parent"]
        by_name = {s.name: s for s in snapshots}
        while parent is not None and parent not in imported_names:
            parent = by_name[parent].parent if parent in by_name else None
        record["parent"] = parent
    for overlay in overlays:
        origins.setdefault(overlay, Origin.MANAGED)
    for path in tracked.values():
        origins.setdefault(path, Origin.ADOPTED)
    current = _current(records)
    at = ledger.clock()

    def extend(vm: VirtualMachine) -> None:
        vm.bind_libvirt(uri, name)
        if records:
            vm.import_snapshots(records, current, at)

    ledger.adopt(name, tracked, pools, definition, origins=origins, extend=extend)
    if records and not keep_metadata:
        for record in records:
            port.delete_snapshot_metadata(name, record["name"])
        notes.append(
            "libvirt's metadata of the imported snapshots was removed: snapledger keeps their "
            "history now (--keep-libvirt-metadata keeps it)"
        )
    return AdoptReport(tracked, left_alone, [r["name"] for r in records], notes)


def _created(seconds: int | None) -> str:
    from datetime import UTC, datetime

    if seconds is None:
        return "unknown"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def _current(records: list[dict[str, Any]]) -> str | None:
    """The snapshot the present grew from: the last one taken (libvirt cannot revert external
    snapshots, so its history is a line)."""
    if not records:
        return None
    return str(records[-1]["name"])


__all__ = [
    "DEFAULT_URI",
    "AdoptReport",
    "LibvirtHypervisor",
    "LibvirtStorage",
    "TEST_JOB_BANDWIDTH_ENV",
    "LiveStepImpossible",
    "adopt_libvirt",
    "job_bandwidth_from_env",
]
