"""LibvirtStorage: the storage port for one libvirt VM's operation. Merges of images a running
QEMU has open go to libvirt block jobs (adapters/libvirt/block_jobs.py: active commit with a
pivot, non-active commit, pull into the active image); everything else goes to the inner storage
(qemu-img).

After a crash it tells from libvirt and the disks what a job did: a job still running is waited
for (and pivoted), a commit whose top libvirt no longer reads is done, but only where the pivot
was ours (`PivotRequested`), happened in the QEMU that ran when the operation began, or is
vouched for (`recover --pivoted`); a domain started anew on the commit's base is refused, since
the guest's writes may be in the top only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from snapledger.adapters.libvirt import definitions
from snapledger.adapters.libvirt.block_jobs import BlockJobs
from snapledger.adapters.libvirt.errors import WrongImage
from snapledger.adapters.libvirt.port import NoSuchDomain
from snapledger.adapters.libvirt.running import LiveDisk, find_live, port_running
from snapledger.adapters.service.ports import Dependants, MergeListener, Sharing, StoragePort
from snapledger.domain.errors import Refused, StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import Commit, Pull, Step
from snapledger.domain.vm import OperationRecord, VirtualMachine

if TYPE_CHECKING:
    from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor


class LibvirtStorage:
    """StoragePort for one libvirt VM's operation: merges of images a running QEMU has open go to
    libvirt block jobs, everything else to `inner`."""

    def __init__(self, inner: StoragePort, hypervisor: LibvirtHypervisor, vm: VirtualMachine) -> None:
        self.inner = inner
        self.hypervisor = hypervisor
        self.vm = vm
        self.port, self.domain = hypervisor.port(vm)

    @property
    def progress(self) -> MergeListener | None:
        listener: MergeListener | None = getattr(self.inner, "progress", None)
        return listener

    # ---- passed through --------------------------------------------------------------

    def check_tools(self) -> None:
        self.inner.check_tools()

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

    def _jobs(self) -> BlockJobs:
        return BlockJobs(self.port, self.hypervisor, self.progress)

    def _live(self, path: str) -> LiveDisk | None:
        return find_live(self.hypervisor.live_disks(self.vm), path)

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        live = self._live(top)
        if live is None:
            if self._committed_live_before(top, base):
                return  # a block job did it before a crash; qemu-img must not do it again
            self.inner.commit(top, base, fmt=fmt)
            return
        self._jobs().commit(live, top, base)

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
        self._jobs().await_ending(live)

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
        self._jobs().pull(live, image, new_backing)

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


__all__ = ["LibvirtStorage"]
