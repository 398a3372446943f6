"""What a storage step, or a set of observed facts, changes in a VM's records: the image graph,
the disks and the snapshots (vm.py's events apply it; pure, as every event body must be)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .images import ImageFacts, ImageRecord, Origin
from .steps import (
    DOMAIN_STEPS,
    Commit,
    CreateOverlay,
    DeleteFile,
    DetachImage,
    MoveFrozen,
    Pull,
    RebaseUnsafe,
    ReleaseImage,
    SetActive,
    Step,
)
from .vm_records import SnapshotRecord


def apply_step(
    images: dict[str, ImageRecord], disks: dict[str, str], snapshots: dict[str, SnapshotRecord], step: Step
) -> None:
    """The ledger side of a step: what it changes in the image graph and the metadata."""
    if isinstance(step, CreateOverlay):
        facts = ImageFacts(
            step.path, "qcow2", step.backing, step.backing_format, step.virtual_size, 0, 0, 0, 0
        )
        images[step.path] = ImageRecord(facts, Origin.MANAGED)
    elif isinstance(step, (Pull, RebaseUnsafe)):
        record = images[step.image]
        images[step.image] = replace(
            record, facts=record.facts.with_backing(step.new_backing, step.new_backing_format)
        )
    elif isinstance(step, (DeleteFile, ReleaseImage)):
        images.pop(step.path, None)
    elif isinstance(step, SetActive):
        disks[step.disk] = step.path
        record = images[step.path]
        if record.detached:
            images[step.path] = replace(record, detached=False)
    elif isinstance(step, DetachImage):
        images[step.path] = replace(images[step.path], detached=True)
    elif isinstance(step, MoveFrozen):
        snap = snapshots[step.snapshot]
        snapshots[step.snapshot] = replace(
            snap, disks={**snap.disks, step.disk: step.path}
        )
    elif isinstance(step, DOMAIN_STEPS):
        pass  # the hypervisor's side; disks change in the ledger by their SetActive steps
    else:
        assert isinstance(step, Commit)  # content moves; facts arrive as observations


def observe(images: dict[str, ImageRecord], observed: list[dict[str, Any]]) -> None:
    """Facts an adapter observed, for the images the VM holds (others are not its own)."""
    for item in observed:
        facts = ImageFacts.from_dict(item)
        record = images.get(facts.path)
        if record is not None:
            images[facts.path] = replace(record, facts=facts)
