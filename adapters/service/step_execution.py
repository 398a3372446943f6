"""Carrying out one storage step, so that it can be done again after a crash at any moment.

Each step either sees from the disk that it was done before (an overlay already there, a pull
whose image is already over its new backing) or is harmless to run again; the facts of the
files it changed are read back afterwards, in the formats the ledger recorded.
"""

from __future__ import annotations

from collections.abc import Callable

from snapledger.adapters.service.ports import StoragePort
from snapledger.domain.errors import StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import (
    DOMAIN_STEPS,
    Commit,
    CreateOverlay,
    DeleteFile,
    Pull,
    RebaseUnsafe,
    Step,
)


def carry_out(
    storage: StoragePort,
    step: Step,
    format_of: Callable[[str], str],
    resumed: bool = False,
    was: tuple[str | None, str | None] | None = None,
) -> list[ImageFacts]:
    """Do one storage step, or see from the disk that it was done before a crash; return the
    facts of the files it changed, as observed afterwards. Every image is opened with the format
    the ledger recorded (`format_of`), never a guessed one.

    `resumed`: the step may have been cut short (recover's first step). A killed qemu-img never
    wrote back its cached metadata, so the image a merge wrote is repaired first; and a pull's
    header may already name the new backing while the data it needs is not all in (QEMU writes
    the header first): unless the image reads over the new backing what it read over the old
    one (`was`, still whole: it is deleted only by a later step), it is put back over the old
    one and the pull done again."""
    if isinstance(step, CreateOverlay):
        if storage.exists(step.path):
            try:
                facts = storage.inspect(step.path, "qcow2")
            except StorageError:
                facts = None
            if facts is not None and facts.backing == step.backing:
                pass  # made before a crash
            elif resumed and storage.remove_unfinished(step.path):  # a create cut short
                storage.create_overlay(
                    step.path, step.backing, step.backing_format, step.virtual_size
                )
            else:
                raise StorageError(f"{step.path} exists and is not the overlay this operation made")
        else:
            storage.create_overlay(step.path, step.backing, step.backing_format, step.virtual_size)
        return [storage.inspect(step.path, "qcow2")]
    if isinstance(step, Commit):
        if resumed:
            storage.repair(step.base, fmt=format_of(step.base))
        storage.commit(step.top, step.base, fmt=format_of(step.top))
        return [storage.inspect(step.base, format_of(step.base)),
                storage.inspect(step.top, format_of(step.top))]
    if isinstance(step, (Pull, RebaseUnsafe)):
        fmt = format_of(step.image)
        if isinstance(step, Pull) and resumed:
            _undo_a_pull_cut_short(storage, step, fmt, was)
        if storage.inspect(step.image, fmt).backing != step.new_backing:
            if isinstance(step, Pull):
                storage.pull(step.image, step.new_backing, step.new_backing_format, fmt=fmt)
            else:
                storage.rebase_unsafe(step.image, step.new_backing, step.new_backing_format, fmt=fmt)
        return [storage.inspect(step.image, fmt)]
    if isinstance(step, DeleteFile):
        if storage.exists(step.path):
            storage.delete(step.path)
        return []
    if isinstance(step, DOMAIN_STEPS):  # never silently skipped: only a hypervisor does them
        raise StorageError(f"{step.action} needs the libvirt adapter")
    return []  # ledger-only steps


def _undo_a_pull_cut_short(
    storage: StoragePort, step: Pull, fmt: str, was: tuple[str | None, str | None] | None
) -> None:
    storage.repair(step.image, fmt=fmt)
    if was is None or was[0] is None or was[0] == step.new_backing or was[1] is None:
        return
    if not storage.exists(was[0]):
        return  # nothing to compare with: the step checks the chain itself
    if storage.inspect(step.image, fmt).backing != step.new_backing:
        return  # the header still names the old backing: the pull is simply done again
    if not storage.reads_same_over(step.image, fmt, was[0], was[1]):
        storage.rebase_unsafe(step.image, was[0], was[1], fmt=fmt)


__all__ = ["carry_out"]
