"""The questions a VirtualMachine answers about itself without changing anything: where it
lives, which snapshot or disk a name means, whether it may start an operation, its chains as it
recorded them. A mixin of the aggregate (vm.py), kept apart from the facts that change it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    BadInput,
    DuplicateName,
    HomeElsewhere,
    OperationInProgress,
    UnknownDisk,
    UnknownSnapshot,
)
from .ledger_hash import UNKNOWN_HOST
from .names import check_disk_target, check_name

if TYPE_CHECKING:
    from .images import ImageRecord
    from .vm_records import OperationRecord, SnapshotRecord


class VmQueries:
    if TYPE_CHECKING:  # the aggregate's state (vm.py), declared for the type checker only
        name: str
        home: str
        retired: str | None
        disks: dict[str, str]
        images: dict[str, ImageRecord]
        snapshots: dict[str, SnapshotRecord]
        operation: OperationRecord | None
        pools: list[str]
        adopted_dirs: set[str]
        shared: tuple[str, ...]

    def lives_on(self, host: str) -> bool:
        """Whether `host` may change this VM: its home host. A VM recorded without any host
        (a ledger written through the library with no recording context) is anyone's."""
        return self.home in ("", UNKNOWN_HOST) or self.home == host

    def check_home(self, host: str) -> None:
        if not self.lives_on(host):
            raise HomeElsewhere(
                f"VM {self.name!r} lives on host {self.home!r}, not on this host ({host!r}): "
                "only its home host changes it or looks at its disks; run the command there"
            )

    def snapshot(self, name: str) -> SnapshotRecord:
        try:
            return self.snapshots[name]
        except KeyError:
            raise UnknownSnapshot(f"VM {self.name!r} has no snapshot {name!r}") from None

    def check_disk(self, target: str) -> str:
        check_disk_target(target)
        if target not in self.disks:
            raise UnknownDisk(f"VM {self.name!r} has no disk {target!r}")
        return target

    def check_idle(self) -> None:
        self.check_tracked()
        if self.operation is not None:
            op = self.operation
            raise OperationInProgress(
                f"VM {self.name!r} has an unfinished {op.kind} operation {op.op_id}"
                f"{' (failed: ' + op.failure + ')' if op.failure else ''}; run 'snapledger recover'"
            )

    def check_tracked(self) -> None:
        if self.retired is not None:
            raise BadInput(
                f"VM {self.name!r} was retired at {self.retired}: it is no longer tracked (its "
                "history stays readable; adopt it again to track it anew)"
            )

    def missing_images(self) -> set[str]:
        return {path for path, record in self.images.items() if record.missing}

    def broken_snapshots(self) -> dict[str, list[str]]:
        """Snapshot -> the disks whose frozen image, or an image below it, is recorded gone."""
        gone = self.missing_images()
        broken: dict[str, list[str]] = {}
        if not gone:
            return broken  # the usual case: nothing to walk (a walk per snapshot is n x depth)
        for snap in self.snapshots.values():
            for disk, path in sorted(snap.disks.items()):
                if gone & set(self.chain_of(path)):
                    broken.setdefault(snap.name, []).append(disk)
        return broken

    def chain_of(self, path: str) -> list[str]:
        """`path` and the images below it, as this VM recorded them."""
        chain: list[str] = []
        seen: set[str] = set()
        current: str | None = path
        while current is not None and current in self.images and current not in seen:
            chain.append(current)
            seen.add(current)
            current = self.images[current].backing
        return chain

    def check_new_snapshot_name(self, name: str) -> None:
        check_name("snapshot", name)
        if name in self.snapshots:
            raise DuplicateName(f"VM {self.name!r} already has a snapshot {name!r}")

    def frozen_images(self) -> dict[str, tuple[str, str]]:
        """Frozen image path -> (snapshot, disk)."""
        return {
            path: (snap.name, disk)
            for snap in self.snapshots.values()
            for disk, path in snap.disks.items()
        }

    def children_of(self, snapshot: str | None) -> list[str]:
        return sorted(s.name for s in self.snapshots.values() if s.parent == snapshot)

    def allowed_dirs(self) -> set[str]:
        """Where this VM's files may be: the directories of its adopted disks, its pools and its
        shared directories. Every file of every chain must resolve inside one of them (or below
        one)."""
        return set(self.adopted_dirs) | set(self.pools) | set(self.shared)
