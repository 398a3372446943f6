"""LibvirtStorage: the storage port for one libvirt VM's operation. Merges of images a running
QEMU has open go to libvirt block jobs (active commit with a pivot, non-active commit, pull into
the active image); everything else goes to the inner storage (qemu-img).

After a crash it tells from libvirt and the disks what a job did: a job still running is waited
for (and pivoted), a commit whose top libvirt no longer reads is done, but only where the pivot
was ours (`PivotRequested`), happened in the QEMU that ran when the operation began, or is
vouched for (`recover --pivoted`); a domain started anew on the commit's base is refused, since
the guest's writes may be in the top only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapledger.adapters.libvirt import definitions
from snapledger.adapters.libvirt.port import BlockJob, LibvirtFailure, LibvirtPort, NoSuchDomain
from snapledger.adapters.libvirt.xml import domain_disks
from snapledger.adapters.service.ports import Dependants, Sharing, StoragePort
from snapledger.domain.errors import ImageInUse, Refused, StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import Commit, Pull, Step
from snapledger.domain.vm import OperationRecord, VirtualMachine

if TYPE_CHECKING:
    from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor


class WrongImage(Refused):
    """The domain runs (or is defined) on another image than the ledger expects at this step of
    an open operation (exit 3): finishing it there could lose the guest's writes."""


class ForeignBlockJob(ImageInUse):
    """A block job snapledger did not start runs on one of the domain's disks (exit 4): libvirt
    runs one job per disk, and a hand-started copy or commit must end first."""


class DomainStopped(StorageError):
    """The domain stopped (destroyed, QEMU ended) while a block job of ours ran on it (exit 4):
    the operation stays open for `recover`, which finishes it from what libvirt and the disks
    say."""

    exit_code = 4


@dataclass
class LiveDisk:
    domain: str
    disk: str
    chain: list[str]  # active first


def port_running(port: LibvirtPort, domain: str) -> bool:
    try:
        return port.is_running(domain)
    except NoSuchDomain:
        return False


def foreign_job(domain: str, disk: str, job: BlockJob, then: str = "") -> ForeignBlockJob:
    """A block job snapledger did not start, and what to do about it (`then`: what follows)."""
    return ForeignBlockJob(
        f"domain {domain!r} runs a block job on {disk} that snapledger did not start "
        f"({job.kind}, {job.cur}/{job.end}): wait for it to end or cancel it ('virsh blockjob "
        f"{domain} {disk} --abort')" + (f"; {then}" if then else "")
    )


def refuse_foreign_jobs(
    port: LibvirtPort, domain: str, disks: Iterable[str], ours: frozenset[str], then: str
) -> None:
    """ForeignBlockJob if a job of a kind not in `ours` runs on one of `disks` of the running
    `domain`."""
    for disk in sorted(disks):
        try:
            job = port.block_job(domain, disk)
        except LibvirtFailure:
            continue  # a disk the running domain does not have: drift says so
        if job is not None and job.kind not in ours:
            raise foreign_job(domain, disk, job, then)


def find_live(live: list[LiveDisk], path: str) -> LiveDisk | None:
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
        return find_live(self.hypervisor.live_disks(self.vm), path)

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
        try:
            job = self.port.block_job(live.domain, live.disk)
            if job is None:
                self.port.block_commit(
                    live.domain, live.disk, base, None if active else top,
                    self.hypervisor.job_bandwidth,
                )
            elif job.kind not in ("commit", "active-commit"):
                raise foreign_job(live.domain, live.disk, job)
            self._wait(live, pivot=active, base=base)
            after = self._live_chain(live)
        except (LibvirtFailure, NoSuchDomain) as error:
            raise self._stopped(live, error) from None
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
        it, and reads `base` instead: a block job committed and dropped `top` already.

        For an active commit (`top` is a disk's active image) that is so only if the pivot was
        ours (PivotRequested recorded) or happened in the QEMU that ran when the operation
        began (a pivot by hand, `virsh blockjob --pivot`). A domain started anew on `base`
        without either lacks the guest's writes kept in `top`: refused (exit 3), and committing
        `top` again is never done while it may have run on `base`."""
        images = self.vm.images
        op = self.vm.operation
        disk_of_top = next((d for d, p in sorted(self.vm.disks.items()) if p == top), None)
        asked = (
            op.pivot_requested(op.done, disk_of_top)
            if op is not None and disk_of_top is not None else None
        )
        try:
            sources = self.hypervisor.live_sources(self.vm)
        except NoSuchDomain as gone:
            if op is not None and asked is not None and op.pivot_vouched(op.done):
                return True  # the operator's word (recover --pivoted): it pivoted
            if disk_of_top is not None and asked is not None:
                # Our pivot was asked for and the domain vanished (a transient one, destroyed):
                # if it pivoted, the guest's later writes are in `base` only, and committing
                # `top` again would overwrite them; the files can't tell.
                hint = definitions.definition_hint
                raise Refused(
                    f"{gone}: snapledger asked libvirt to pivot {disk_of_top} onto {base} and "
                    f"can't tell whether it did before the domain went. Nothing was done. If the "
                    f"domain ran on {base} after the pivot, run 'snapledger recover "
                    f"{self.vm.name} --pivoted' (then start it with "
                    f"{hint(self.vm, {disk_of_top: base})}); if it did not, start it again with "
                    f"{hint(self.vm, {disk_of_top: top})} and run 'snapledger recover'"
                ) from None
            return False  # no pivot of ours: `top` holds the present, committed again offline
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
                if disk == disk_of_top and asked is None and not self._same_qemu(op):
                    how = "runs" if port_running(self.port, self.domain) else "is defined to run"
                    raise WrongImage(
                        f"domain {self.domain!r} {how} {disk} on {source}, but the ledger expects "
                        f"{top} at this step: snapledger never asked libvirt to pivot onto "
                        f"{base}, so the guest's writes since the snapshot may be in {top} "
                        f"only. Nothing was done. Shut the domain down, start it on {top} "
                        f"({definitions.definition_hint(self.vm, {disk: top})}), then "
                        f"run 'snapledger recover'; or, if it was pivoted onto {base} by hand "
                        f"(virsh blockjob --pivot) and ran there, 'snapledger recover "
                        f"{self.vm.name} --pivoted'"
                    )
                return True
        return False

    def _same_qemu(self, op: OperationRecord | None) -> bool:
        """The domain runs in the QEMU that ran when the operation began (its libvirt id)."""
        began = op.details.get("domain_id") if op is not None else None
        return began is not None and self.hypervisor.domain_id(self.vm) == began

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
        try:
            job = self.port.block_job(live.domain, live.disk)
            if job is None:
                self.port.block_pull(
                    live.domain, live.disk, new_backing, self.hypervisor.job_bandwidth
                )
            elif job.kind != "pull":
                raise foreign_job(live.domain, live.disk, job)
            self._wait(live, pivot=False)
            after = self._live_chain(live)
        except (LibvirtFailure, NoSuchDomain) as error:
            raise self._stopped(live, error) from None
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

    def _stopped(self, live: LiveDisk, error: StorageError | NoSuchDomain) -> StorageError:
        """A libvirt failure during a job of ours: DomainStopped (exit 4) if the domain is no
        longer running, else the failure as it is."""
        # A domain being destroyed first breaks QEMU's monitor ("Unable to read from monitor")
        # and is reported as stopped a moment later: look again for a few seconds.
        dying = any(w in str(error) for w in ("monitor", "not running", "Connection reset"))
        deadline = time.monotonic() + (5.0 if dying else 0.0)
        while True:
            try:
                running = port_running(self.port, live.domain)
            except LibvirtFailure:
                running = True  # libvirt itself is away (restarting): the failure says so
                break
            if not running or time.monotonic() >= deadline:
                break
            self.hypervisor.sleep(0.1)
        if running:
            return error if isinstance(error, StorageError) else StorageError(str(error))
        return DomainStopped(
            f"domain {live.domain!r} stopped during the block job on {live.disk} (destroyed, or "
            f"its QEMU ended): {error}; run 'snapledger recover', which finishes the operation "
            "from what libvirt and the disks say"
        )

    def _live_chain(self, live: LiveDisk) -> list[str]:
        for disk in domain_disks(self.port.xml(live.domain)):
            if disk.target == live.disk and disk.source:
                return [disk.source, *disk.chain]
        return []

    def _wait(self, live: LiveDisk, pivot: bool, base: str | None = None) -> None:
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
                if self.hypervisor.on_pivot is not None and base is not None:
                    self.hypervisor.on_pivot(live.disk, base)  # recorded before it is asked
                try:
                    self.port.pivot(live.domain, live.disk)
                    if self.progress is not None:
                        self.progress(1.0)
                    if self.hypervisor.pause_after_pivot:
                        time.sleep(self.hypervisor.pause_after_pivot)
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


__all__ = [
    "DomainStopped",
    "ForeignBlockJob",
    "LibvirtStorage",
    "LiveDisk",
    "WrongImage",
    "find_live",
    "foreign_job",
    "refuse_foreign_jobs",
    "port_running",
]
