"""libvirt block jobs on the disks of a running domain: starting a commit or a pull (or taking
over one of ours still running after a crash), waiting for it, pivoting an active commit, and
telling a job that is not ours or a domain that stopped under it.

LibvirtStorage (adapters/libvirt/storage.py) routes here every merge of an image a running QEMU
has open; `JobKnobs` are LibvirtHypervisor's settings for them, read at each use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from snapledger.adapters.libvirt.errors import DomainStopped, ForeignBlockJob
from snapledger.adapters.libvirt.port import BlockJob, LibvirtFailure, LibvirtPort, NoSuchDomain
from snapledger.adapters.libvirt.running import LiveDisk, live_chain, port_running
from snapledger.adapters.service.ports import MergeListener
from snapledger.domain.errors import StorageError

COMMIT_KINDS = ("commit", "active-commit")


class JobKnobs(Protocol):
    """How block jobs are run and waited for (LibvirtHypervisor has these)."""

    poll_seconds: float  # the longest pause between two looks at a running job
    job_timeout: float  # seconds before a job is cancelled
    sleep: Callable[[float], None]
    job_bandwidth: int  # bytes per second for every job started; 0: no limit (a test knob)
    pause_after_pivot: float  # seconds to wait after a pivot of ours (a test knob)
    # called with (disk, base) right before a pivot of ours, so the service records it first
    on_pivot: Callable[[str, str], None] | None


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


class BlockJobs:
    """The block jobs of one connection, run with `knobs`, reporting to `progress`."""

    def __init__(
        self, port: LibvirtPort, knobs: JobKnobs, progress: MergeListener | None = None
    ) -> None:
        self.port = port
        self.knobs = knobs
        self.progress = progress
        self._told: tuple[str, str, str] | None = None  # the merge `progress` knows of, running

    def commit(self, live: LiveDisk, top: str, base: str) -> None:
        """Commit `top` into `base` (its backing file in `live`'s chain) by a block job: an
        active commit, pivoted onto `base`, if `top` is the disk's active image."""
        at = live.chain.index(top)
        if at + 1 >= len(live.chain) or live.chain[at + 1] != base:
            raise StorageError(f"{base} is not the backing file of {top} in {live.domain}'s {live.disk}")
        active = at == 0
        try:
            job = self.port.block_job(live.domain, live.disk)
            if job is None:
                self.port.block_commit(
                    live.domain, live.disk, base, None if active else top, self.knobs.job_bandwidth
                )
            elif job.kind not in COMMIT_KINDS:
                raise foreign_job(live.domain, live.disk, job)
            self.wait(live, pivot=active, base=base, merge=("commit", top, base))
            after = live_chain(self.port, live)
        except (LibvirtFailure, NoSuchDomain) as error:
            raise self.stopped(live, error) from None
        if top in after or base not in after:
            raise StorageError(
                f"block commit of {top} into {base} did not finish: {live.domain}'s {live.disk} "
                f"still reads {' <- '.join(reversed(after))}"
            )

    def pull(self, live: LiveDisk, image: str, new_backing: str | None) -> None:
        """Pull everything above `new_backing` into `image`, the disk's active image, by a block
        job (a block stream)."""
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
                self.port.block_pull(live.domain, live.disk, new_backing, self.knobs.job_bandwidth)
            elif job.kind != "pull":
                raise foreign_job(live.domain, live.disk, job)
            self.wait(live, pivot=False, merge=("pull", live.chain[1] if len(live.chain) > 1 else image, image))
            after = live_chain(self.port, live)
        except (LibvirtFailure, NoSuchDomain) as error:
            raise self.stopped(live, error) from None
        expected = after[1] if len(after) > 1 else None
        if expected != new_backing:
            raise StorageError(
                f"block pull into {image} did not finish: it is backed by {expected or 'nothing'}"
            )

    def await_ending(self, live: LiveDisk) -> None:
        """Wait for a job on `live`'s disk that ends by itself (a non-active commit or a pull);
        an active commit waits for a pivot and is left to `commit`."""
        job = self.port.block_job(live.domain, live.disk)
        if job is not None and job.kind in ("commit", "pull"):
            self.wait(live, pivot=False)

    def wait(
        self, live: LiveDisk, pivot: bool, base: str | None = None,
        merge: tuple[str, str, str] | None = None,
    ) -> None:
        """Until the disk's job ends, or, with `pivot`, until it is ready and pivoted (onto
        `base`, which `on_pivot` is told first). Cancelled after `job_timeout`. `merge`: the
        step, source and target `progress` is told of, once the job says its size."""
        try:
            self._wait(live, pivot, base, merge)
        finally:
            if self._told is not None and self.progress is not None:
                self.progress.finished()
            self._told = None

    def _report(self, merge: tuple[str, str, str] | None, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self._told is None and merge is not None:
            self._told = merge
            self.progress.started(*merge, total)
        if self._told is not None:
            self.progress.advanced(min(done / total, 1.0) if total else 1.0)

    def _wait(
        self, live: LiveDisk, pivot: bool, base: str | None, merge: tuple[str, str, str] | None
    ) -> None:
        deadline = time.monotonic() + self.knobs.job_timeout
        pause = 0.005  # short jobs end in milliseconds: look again soon, then less often
        while True:
            job: BlockJob | None = self.port.block_job(live.domain, live.disk)
            if job is None:
                self._report(merge, 1, 1)
                return  # finished; the caller reads the chain to see how
            if job.end:
                self._report(merge, job.cur, job.end)
            if pivot and job.ready:
                if self.knobs.on_pivot is not None and base is not None:
                    self.knobs.on_pivot(live.disk, base)  # recorded before it is asked
                try:
                    self.port.pivot(live.domain, live.disk)
                    self._report(merge, 1, 1)
                    if self.knobs.pause_after_pivot:
                        time.sleep(self.knobs.pause_after_pivot)
                    return
                except LibvirtFailure as error:
                    if "not ready" not in str(error):
                        raise
            if time.monotonic() > deadline:
                self.port.abort_job(live.domain, live.disk)
                raise StorageError(
                    f"block job on {live.domain}'s {live.disk} timed out after "
                    f"{self.knobs.job_timeout:g} s and was cancelled"
                )
            self.knobs.sleep(pause)
            pause = min(pause * 2, self.knobs.poll_seconds)

    def stopped(self, live: LiveDisk, error: StorageError | NoSuchDomain) -> StorageError:
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
            self.knobs.sleep(0.1)
        if running:
            return error if isinstance(error, StorageError) else StorageError(str(error))
        return DomainStopped(
            f"domain {live.domain!r} stopped during the block job on {live.disk} (destroyed, or "
            f"its QEMU ended): {error}; run 'snapledger recover', which finishes the operation "
            "from what libvirt and the disks say"
        )


__all__ = ["COMMIT_KINDS", "BlockJobs", "JobKnobs", "foreign_job", "refuse_foreign_jobs"]
