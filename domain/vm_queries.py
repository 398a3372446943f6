"""The questions a VirtualMachine answers about itself without changing anything: where it
lives, which snapshot or disk a name means, whether it may start an operation, its chains as it
recorded them. A mixin of the aggregate (vm.py), kept apart from the facts that change it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BadInput,
    DuplicateName,
    HomeElsewhere,
    OperationInProgress,
    Refused,
    UnknownDisk,
    UnknownSnapshot,
)
from .ledger_hash import UNKNOWN_HOST
from .names import check_disk_target, check_name, is_within

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

    def allowed_dirs(self) -> set[str]:
        """Where this VM's files may be: the directories of its adopted disks, its pools and its
        shared directories. Every file of every chain must resolve inside one of them (or below
        one)."""
        return set(self.adopted_dirs) | set(self.pools) | set(self.shared)

    # ---- the rules of the facts without storage steps (vm.py records them) --------------

    def check_swappable(self, disk: str, new: str) -> None:
        """`new`, an image the user put in place, may become `disk`'s active image."""
        self.check_idle()
        self.check_disk(disk)
        if new == self.disks[disk]:
            raise BadInput(f"{new} is already the active image of {disk}")
        if new in self.frozen_images():
            snap, _ = self.frozen_images()[new]
            raise Refused(f"{new} holds snapshot {snap!r}; writing it would change that snapshot")
        if new in self.disks.values():
            raise BadInput(f"{new} is already active for another disk of {self.name!r}")

    def check_importable(self, snapshots: list[dict[str, Any]], current: str | None) -> None:
        """Snapshots another tool took may be recorded (import_snapshots)."""
        self.check_idle()
        names = {s["name"] for s in snapshots}
        for snap in snapshots:
            self.check_new_snapshot_name(snap["name"])
            if snap["parent"] is not None and snap["parent"] not in names:
                raise BadInput(f"snapshot {snap['name']!r}: parent {snap['parent']!r} is unknown")
            for disk, path in snap["disks"].items():
                self.check_disk(disk)
                if path not in self.images:
                    raise BadInput(f"snapshot {snap['name']!r}: {path} is not in {disk}'s chain")
        if current is not None and current not in names:
            raise BadInput(f"current snapshot {current!r} is unknown")

    def check_holds(self, paths: list[str]) -> None:
        """Every one of `paths` is an image this VM holds."""
        unknown = [p for p in paths if p not in self.images]
        if unknown:
            raise BadInput(f"VM {self.name!r} holds no image {unknown[0]}")

    def check_movable(self, to: str, taken_over: bool, shared: tuple[str, ...]) -> None:
        """The VM may get the home host `to`: each image it holds lies on `shared` storage."""
        if to == self.home:
            raise BadInput(f"VM {self.name!r} already lives on host {to!r}")
        if not taken_over:
            self.check_idle()
        local = sorted(
            path for path, record in self.images.items()
            if not record.missing and not is_within(path, shared)
        )
        if local:
            raise Refused(
                f"VM {self.name!r} can't move: {', '.join(local[:3])}{' ...' if len(local) > 3 else ''} "
                f"{'is' if len(local) == 1 else 'are'} not on shared storage (declare the "
                "directory with adopt --shared, or copy the images there first); the new host "
                "would not see the files the ledger names"
            )
