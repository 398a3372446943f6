"""What the ledger knows about one image file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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

    def identity_differs(self, seen: ImageFacts, *, check_size: bool) -> list[str]:
        """What changed between the recorded facts (self) and what is seen on disk now."""
        changed = []
        for name in ("format", "backing", "backing_format", "device", "inode"):
            if getattr(self, name) != getattr(seen, name):
                changed.append(f"{name} {getattr(self, name)!r} -> {getattr(seen, name)!r}")
        if check_size and self.size != seen.size:
            changed.append(f"size {self.size} -> {seen.size}")
        return changed


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
