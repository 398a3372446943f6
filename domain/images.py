"""What the ledger knows about one image file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Origin(StrEnum):
    """How an image came into a VM's ledger; with sharing it decides the owner class."""

    MANAGED = "managed"  # an overlay snapledger created
    ADOPTED = "adopted"  # a VM's own disk at adopt time, or an image swapped in
    FOUND = "found"  # below an adopted disk (a template): read-only


class OwnerClass(StrEnum):
    MANAGED = "managed"
    ADOPTED = "adopted"
    READ_ONLY = "read-only"


@dataclass(frozen=True)
class ImageFacts:
    """Facts a storage adapter observed about one file; events carry them so replay never looks."""

    path: str
    format: str
    backing: str | None
    backing_format: str | None
    virtual_size: int
    allocated: int  # bytes allocated in this layer alone
    device: int
    inode: int
    size: int  # file size on the host
    # The file's st_mtime_ns and st_ctime_ns when observed; 0: not known (facts recorded before
    # snapledger looked at times). Last, with defaults: older events' dicts still load.
    mtime_ns: int = 0
    ctime_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageFacts:
        return cls(**data)

    def with_backing(self, backing: str | None, backing_format: str | None) -> ImageFacts:
        return replace(self, backing=backing, backing_format=backing_format)

    def identity_differs(
        self, seen: ImageFacts, *, check_size: bool, check_mtime: bool = False,
        check_ctime: bool = False,
    ) -> list[str]:
        """What changed between the recorded facts (self) and what is seen on disk now.

        `check_size`: the image is not active (a guest does not write it). `check_mtime`: it
        is not detached either, so its content must stay as recorded (frozen means frozen): a
        moved mtime is a change even at the same size and inode. `check_ctime`: a moved ctime
        too (its owner, mode or links changed, or its content); not for libvirt's domains,
        whose security driver chowns every image of a chain at each start. A time is compared
        only where both sides know it (0: facts recorded before times were)."""
        changed = []
        for name in ("format", "backing", "backing_format", "device", "inode"):
            if getattr(self, name) != getattr(seen, name):
                changed.append(f"{name} {getattr(self, name)!r} -> {getattr(seen, name)!r}")
        if check_size and self.size != seen.size:
            changed.append(f"size {self.size} -> {seen.size}")
        if check_mtime and _moved(self.mtime_ns, seen.mtime_ns):
            changed.append(
                f"modified since it was frozen (mtime {format_ns(self.mtime_ns)} -> "
                f"{format_ns(seen.mtime_ns)})"
            )
        elif check_mtime and check_ctime and _moved(self.ctime_ns, seen.ctime_ns):
            changed.append(
                f"changed since it was frozen (ctime {format_ns(self.ctime_ns)} -> "
                f"{format_ns(seen.ctime_ns)}, mtime the same: its owner, mode, links or "
                "content were changed)"
            )
        return changed


def _moved(recorded: int, seen: int) -> bool:
    return recorded != 0 and seen != 0 and recorded != seen


def format_ns(ns: int) -> str:
    """A file time in nanoseconds since the epoch, for people: UTC, to the nanosecond."""
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{rest:09d}Z"


@dataclass(frozen=True)
class ImageRecord:
    """An image as one VM's ledger holds it."""

    facts: ImageFacts
    origin: Origin
    detached: bool = False
    # Recorded gone by `reconcile`: the file is not on disk; what rests on it is broken.
    missing: bool = False

    @property
    def path(self) -> str:
        return self.facts.path

    @property
    def backing(self) -> str | None:
        return self.facts.backing
