"""The one vocabulary of steps shared by planners, the ledger and every storage adapter.

A plan is an ordered list of steps. Storage steps are carried out by a storage adapter; ledger
steps only change what the ledger says (which image is active, which image freezes a snapshot).
Every step is ordered so that, at each boundary, what the ledger says reads the same bytes as disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar


@dataclass(frozen=True)
class CreateOverlay:
    """A new, empty qcow2 overlay over `backing` (backing format always explicit)."""

    path: str
    backing: str
    backing_format: str
    virtual_size: int
    bytes: int = 0
    action: ClassVar[str] = "create-overlay"
    destructive: ClassVar[bool] = False


@dataclass(frozen=True)
class Commit:
    """Write `top`'s allocated clusters into its backing file `base` (`top` is kept)."""

    top: str
    base: str
    bytes: int = 0
    action: ClassVar[str] = "commit"
    destructive: ClassVar[bool] = True


@dataclass(frozen=True)
class Pull:
    """Copy into `image` what it reads from the chain above `new_backing`, then back it by that.

    What `image` reads does not change. `new_backing` None flattens the image completely.
    `scanned_bytes` is what a safe `qemu-img rebase` reads besides the bytes it moves.
    """

    image: str
    new_backing: str | None
    new_backing_format: str | None
    bytes: int = 0
    scanned_bytes: int = 0
    action: ClassVar[str] = "pull"
    destructive: ClassVar[bool] = True


@dataclass(frozen=True)
class RebaseUnsafe:
    """Only rewrite `image`'s backing pointer; valid when both backings read the same."""

    image: str
    new_backing: str | None
    new_backing_format: str | None
    bytes: int = 0
    action: ClassVar[str] = "rebase-unsafe"
    destructive: ClassVar[bool] = True


@dataclass(frozen=True)
class DeleteFile:
    path: str
    bytes: int = 0
    action: ClassVar[str] = "delete-file"
    destructive: ClassVar[bool] = True


@dataclass(frozen=True)
class SetActive:
    """Ledger only: `path` becomes the active image of `disk`."""

    disk: str
    path: str
    bytes: int = 0
    action: ClassVar[str] = "set-active"
    destructive: ClassVar[bool] = False


@dataclass(frozen=True)
class MoveFrozen:
    """Ledger only: snapshot `snapshot` is now held by `path` on `disk` (after a commit)."""

    snapshot: str
    disk: str
    path: str
    bytes: int = 0
    action: ClassVar[str] = "move-frozen"
    destructive: ClassVar[bool] = False


@dataclass(frozen=True)
class ReleaseImage:
    """Ledger only: this VM stops tracking a file it does not own; the file stays on disk."""

    path: str
    bytes: int = 0
    action: ClassVar[str] = "release-image"
    destructive: ClassVar[bool] = False


@dataclass(frozen=True)
class DetachImage:
    """Ledger only: an image this VM no longer uses but must keep (a user's own file abandoned by
    a revert) is detached: it and its chain stay until the user discards it."""

    path: str
    bytes: int = 0
    action: ClassVar[str] = "detach-image"
    destructive: ClassVar[bool] = False


@dataclass(frozen=True)
class SwitchDisks:
    """Hypervisor: the running `domain` starts writing to new overlays, all disks at once (one
    atomic disk-only external snapshot without hypervisor metadata). `disks` are (target,
    overlay) pairs; each overlay exists already and is backed by that disk's active image."""

    domain: str
    disks: tuple[tuple[str, str], ...]
    bytes: int = 0
    action: ClassVar[str] = "switch-disks"
    destructive: ClassVar[bool] = False  # atomic: when it fails, nothing changed

    def __post_init__(self) -> None:  # from JSON, pairs come back as lists
        object.__setattr__(self, "disks", tuple((str(t), str(p)) for t, p in self.disks))


@dataclass(frozen=True)
class StopDomain:
    """Hypervisor: the running `domain` is stopped (its memory state is lost, as at a revert)."""

    domain: str
    bytes: int = 0
    action: ClassVar[str] = "stop-domain"
    destructive: ClassVar[bool] = True


@dataclass(frozen=True)
class DefineDomain:
    """Hypervisor: `domain` is (re)defined from `xml`, whose disk sources are the ledger's
    active images. For a transient domain (`persistent` false) nothing is defined: the XML is
    what the domain is started from."""

    domain: str
    xml: str
    persistent: bool = True
    bytes: int = 0
    action: ClassVar[str] = "define-domain"
    destructive: ClassVar[bool] = True  # a rollback would not restore the old definition


@dataclass(frozen=True)
class StartDomain:
    """Hypervisor: `domain` is started again (revert --running), the operation's last step, so
    that `recover` starts it too. A transient domain is created from `xml` (nothing is defined to
    start); a persistent one (`xml` empty) is started. Already running: done."""

    domain: str
    xml: str = ""
    bytes: int = 0
    action: ClassVar[str] = "start-domain"
    # Not destructive: the disks are final before it. A domain that does not start leaves the
    # operation finished and recorded, with the reason in the error (adapters/libvirt/).
    destructive: ClassVar[bool] = False


DOMAIN_STEPS = (SwitchDisks, StopDomain, DefineDomain, StartDomain)

Step = (
    CreateOverlay
    | Commit
    | Pull
    | RebaseUnsafe
    | DeleteFile
    | SetActive
    | MoveFrozen
    | ReleaseImage
    | DetachImage
    | SwitchDisks
    | StopDomain
    | DefineDomain
    | StartDomain
)
STEP_TYPES: dict[str, type[Step]] = {
    t.action: t
    for t in (
        CreateOverlay,
        Commit,
        Pull,
        RebaseUnsafe,
        DeleteFile,
        SetActive,
        MoveFrozen,
        ReleaseImage,
        DetachImage,
        SwitchDisks,
        StopDomain,
        DefineDomain,
        StartDomain,
    )
}
STORAGE_STEPS = (CreateOverlay, Commit, Pull, RebaseUnsafe, DeleteFile)
LEDGER_STEPS = (SetActive, MoveFrozen, ReleaseImage, DetachImage)  # the ledger's alone: no disk


class OperationKind(StrEnum):
    """What a plan does (an operation's `kind`, recorded as its plain string)."""

    SNAPSHOT = "snapshot"
    REVERT = "revert"
    DELETE = "delete"
    GC = "gc"
    SWAP = "swap"  # swap-disk's plan: checked, never run as an operation
    STEP = "step"  # one step's own checks, right before it runs


class Strategy(StrEnum):
    """How `delete` merges a frozen image away: the cheaper of the two, or the one asked for."""

    AUTO = "auto"
    COMMIT = "commit"
    PULL = "pull"


class BranchOption(StrEnum):
    """What `delete` does with a branch point (a frozen image more than one branch rests on)."""

    FORBID = "forbid"
    PULL = "pull"
    KEEP = "keep"


def step_to_dict(step: Step) -> dict[str, Any]:
    return {"action": step.action, **asdict(step)}


def step_from_dict(data: dict[str, Any]) -> Step:
    values = dict(data)
    step_type = STEP_TYPES[values.pop("action")]
    names = {f.name for f in fields(step_type)}
    return step_type(**{k: v for k, v in values.items() if k in names})


def touched_paths(step: Step) -> tuple[str, ...]:
    """Images whose file a storage step reads or changes (for drift checks and reservations)."""
    if isinstance(step, CreateOverlay):
        return (step.backing,)
    if isinstance(step, Commit):
        return (step.top, step.base)
    if isinstance(step, (Pull, RebaseUnsafe)):
        return (step.image,)
    if isinstance(step, DeleteFile):
        return (step.path,)
    return ()


@dataclass(frozen=True)
class Plan:
    """Ordered steps for one request; `strategy` says in words which way was chosen and why."""

    kind: str
    steps: tuple[Step, ...]
    strategy: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def bytes_moved(self) -> int:
        return sum(s.bytes for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "strategy": self.strategy,
            "notes": list(self.notes),
            "steps": [step_to_dict(s) for s in self.steps],
            "bytes_moved": self.bytes_moved,
        }
