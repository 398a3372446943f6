"""The byte model: the oracle of what every snapshot and every present must read.

It knows nothing of snapledger's plans, images or chains; only bytes. A disk's content is a map
from cluster index to one pattern byte (0 reads as "nothing there", as a qcow2 cluster not
allocated anywhere in its chain reads zeros). The rules, all that a storage adapter must honour:

- a disk adopted (or swapped in) reads its own clusters over what its backing file reads;
- a guest's write changes what the present reads, and nothing else;
- a snapshot reads, for ever, what its disks read when it was taken (excluded disks aside);
- a revert makes the present read what the snapshot reads;
- a delete forgets the snapshot: every other snapshot and every present read exactly as before;
- a file a user made is never deleted, and a frozen one (a template) never changes.

A conformance machine (machine.py) and a history run (world.py) check the disks against it after
every step, whatever snapledger believes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from snapledger.adapters.service.ports import StoragePort

Content = dict[int, int]  # cluster index -> the pattern byte every byte of it reads (0: none)
CLUSTER = 64 * 1024  # the model's cluster, and `qemu-io write -P`'s unit in the tests


@dataclass(frozen=True, order=True)
class SnapRef:
    """A snapshot as the model knows it: the VM and the snapshot's name."""

    vm: str
    name: str


class ByteStorage(StoragePort, Protocol):
    """A storage adapter with the test's hands: make a user's file, write as a guest, read every
    cluster through the chain. The conformance machine needs these beside the port."""

    root: str  # every path the machine makes lies under this directory ("" for a simulation)

    def make_image(
        self, path: str, virtual_size: int, clusters: Content | None = None,
        backing: str | None = None, fmt: str = "qcow2",
    ) -> None:
        """Make `path` as a user would (parent directories included), its clusters written."""

    def write(self, path: str, cluster: int, pattern: int) -> None:
        """A guest writes `pattern` into every byte of `cluster` of the image at `path`."""

    def read_all(self, path: str) -> Content:
        """Every cluster that reads non-zero through `path`'s whole chain."""

    def paths(self) -> list[str]:
        """Every file the storage holds under `root` (to find orphans and compare worlds)."""


def over(below: Content, own: Content, clusters: int | None = None) -> Content:
    """What an image reads: its own clusters over what its backing reads (zeros read as nothing;
    with `clusters`, nothing past the image's end)."""
    merged = {**below, **own}
    return {c: v for c, v in merged.items() if v and (clusters is None or c < clusters)}


@dataclass
class ByteModel:
    """What every present and every snapshot must read, and which files must stay as they are."""

    present: dict[tuple[str, str], Content] = field(default_factory=dict)
    taken: dict[SnapRef, dict[str, Content]] = field(default_factory=dict)
    user_files: set[str] = field(default_factory=set)  # never deleted
    frozen_files: dict[str, Content] = field(default_factory=dict)  # never changed either

    # ---- what the world does -----------------------------------------------------------------

    def user_file(self, path: str, content: Content, frozen: bool = False) -> None:
        """A user made `path`: it must never be deleted (and, `frozen`, never written)."""
        self.user_files.add(path)
        if frozen:
            self.frozen_files[path] = dict(content)

    def disk(self, vm: str, disk: str, reads: Content) -> None:
        """`vm`'s `disk` reads `reads` now (adopted, or a user's file swapped in)."""
        self.present[(vm, disk)] = dict(reads)

    def wrote(self, vm: str, disk: str, writes: Content) -> None:
        """A guest wrote into `vm`'s `disk`."""
        self.present[(vm, disk)].update(writes)

    # ---- what snapledger does ----------------------------------------------------------------

    def snapshot(self, vm: str, name: str, disks: Iterable[str]) -> SnapRef:
        """A snapshot of `disks` of `vm` was taken: it reads what they read now."""
        ref = SnapRef(vm, name)
        self.taken[ref] = {d: dict(self.present[(vm, d)]) for d in disks}
        return ref

    def revert(self, ref: SnapRef) -> None:
        """The present of each disk in the snapshot reads what the snapshot reads."""
        for disk, content in self.taken[ref].items():
            self.present[(ref.vm, disk)] = dict(content)

    def delete(self, ref: SnapRef) -> None:
        """The snapshot is gone; nothing else reads differently."""
        del self.taken[ref]

    def snapshots_of(self, vm: str) -> list[SnapRef]:
        return sorted(r for r in self.taken if r.vm == vm)

    # ---- the oracle --------------------------------------------------------------------------

    def misreads(
        self, read: Callable[[str], Content], snapshot_path: Callable[[SnapRef, str], str],
        active_path: Callable[[str, str], str],
    ) -> list[str]:
        """Every snapshot and present that does not read what the model says, with what it read."""
        wrong = []
        for ref, disks in sorted(self.taken.items()):
            for disk, content in sorted(disks.items()):
                got = read(snapshot_path(ref, disk))
                if got != content:
                    wrong.append(f"snapshot {ref.vm}/{ref.name} {disk}: reads {got}, not {content}")
        for (vm, disk), content in sorted(self.present.items()):
            got = read(active_path(vm, disk))
            if got != content:
                wrong.append(f"present {vm}/{disk}: reads {got}, not {content}")
        return wrong
