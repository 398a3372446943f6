"""The fault campaign's independent model of one history: what every snapshot, every present
and every file someone else made must read, and what a finding looks like.

The model changes only by what the campaign did (its guest writes, its files) and by the
outcome of snapledger's commands: an exit 0, or, for a command killed or failed half way, the
ledger's own word after `recover` (does the snapshot exist now? did the revert happen?).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign_bytes import Cell, Content

SMALL_CLUSTERS = 64  # 4 MiB disks
BIG_CLUSTERS = 4096  # 256 MiB virtual
BIG_REGION = (128, 3072)  # 192 MiB from 8 MiB: long enough a merge to be killed in

FAULT_KINDS = (
    "kill-9", "kill-9-merge", "enospc-image", "enospc-ledger", "user-overlay", "hard-link",
    "holder", "raw-header", "vanish", "no-qemu-img",
)


@dataclass
class DiskModel:
    target: str
    clusters: int
    big: bool = False


@dataclass
class VmModel:
    name: str
    fs_root: Path  # its own filesystem root (a tmpfs for the image-ENOSPC fault)
    directory: Path
    disks: dict[str, DiskModel]
    present: dict[str, Content] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Content]] = field(default_factory=dict)
    shown: dict[str, Any] = field(default_factory=dict)  # the last `show VM --json`
    on_tmpfs: bool = False

    def active(self, target: str) -> str:
        return str(self.shown["disks"][target]["active"])

    def actives(self) -> dict[str, str]:
        return {t: self.active(t) for t in self.disks}

    def frozen(self) -> dict[str, tuple[str, str]]:
        """frozen path -> (snapshot, disk), as the ledger last said."""
        return {path: (s["name"], target) for s in self.shown.get("snapshots", [])
                for target, path in s["disks"].items()}

    def shown_names(self) -> set[str]:
        return {str(s["name"]) for s in self.shown.get("snapshots", [])}


@dataclass
class Watched:
    """A file that must keep reading `content` through its whole chain: a user's overlay, a
    hard link, a template, a detached image. `follows`: the image it reads through where the
    campaign's guest writes land (its backing, or the inode it shares), so those writes show
    in it too, except where its `own` clusters cover them."""

    path: str
    fmt: str
    content: Content
    clusters: int
    why: str
    follows: str | None = None
    own: dict[int, Cell] = field(default_factory=dict)
    dropped_by_gc_detached: bool = False


@dataclass
class Intent:
    """One snapledger command and what it means for the model."""

    kind: str  # snapshot revert delete swap-disk gc recover verify reconcile bad-input
    vm: str | None
    args: list[str]
    target: str | None = None  # a snapshot name
    dry_run: bool = False
    disk: str | None = None
    new_path: str | None = None
    include_detached: bool = False
    before_actives: dict[str, str] = field(default_factory=dict)
    before_names: set[str] = field(default_factory=set)

    @property
    def changes_things(self) -> bool:
        return not self.dry_run and self.kind in (
            "snapshot", "revert", "delete", "swap-disk", "gc", "recover", "reconcile")

    @property
    def reads_only(self) -> bool:
        return self.dry_run or self.kind in ("verify", "bad-input")

    def describe(self) -> str:
        return "snapledger " + " ".join(self.args)


@dataclass
class Violation:
    category: str  # "data lost" | "contract broken" | "campaign error"
    kind: str
    seed: int
    step: int
    detail: str
    command: list[str] | None = None
    exit_code: int | None = None
    stderr: str = ""
    steps: list[str] = field(default_factory=list)
    setup: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category, "kind": self.kind, "seed": self.seed, "step": self.step,
            "detail": self.detail, "command": self.command, "exit_code": self.exit_code,
            "stderr": self.stderr[-2000:], "setup": self.setup, "steps": self.steps,
        }


@dataclass
class HistoryResult:
    seed: int
    seconds: float
    operations: int = 0
    commands: int = 0
    recoveries: int = 0
    bytes_read: int = 0
    bytes_vouched: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    setup: str = ""
    steps: list[str] = field(default_factory=list)
