"""In-memory storage with qemu-img's semantics: qcow2 images as cluster maps over backing chains.

Content is a map from cluster index to one pattern byte (what `qemu-io write -P` writes); a
cluster not allocated in an image reads through its backing file, and reads 0 at the bottom.
Faults can be injected: fail (an error the executor sees) or crash (the process dies) at the k-th
mutating call, with merges left half done the way an interrupted qemu-img leaves them, or find the
image locked by another process there (a merge or rebase that does nothing and raises ImageInUse).
Symlinks can be simulated (`symlink`): `resolve` follows them, as realpath does.

The world outside snapledger acts on it too: hard links (`hard_link`, `unlink_name`), another
process holding an image open (`hold`, `release`), a guest writing a qcow2 header into a raw disk
(`forge_header`: only a probe that guesses the format is fooled), a `chmod`, and files a user
makes (`make_image`), which `scan` finds.

Files have times, from a clock of the storage's own that ticks once per change (deterministic):
every write into a file (a guest's, a commit's, a pull's, a rebase's, a repair's, half of one cut
short) moves its mtime and ctime; a change of its metadata only (a link added or removed, a
chmod) moves its ctime.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from snapledger.adapters.service.ports import OnDemand, Sharing
from snapledger.domain.errors import ImageInUse, StorageError, ToolMissing
from snapledger.domain.images import ImageFacts
from snapledger.domain.names import confinement, is_within

CLUSTER = 64 * 1024
HEADER = 192 * 1024  # what an empty qcow2 file takes on the host
EPOCH_NS = 1_798_761_600 * 1_000_000_000  # 2027-01-01T00:00:00Z: the simulated clock's tick 0
TICK_NS = 1_000_123  # one tick of it: a millisecond and a bit, so every digit shows


class SimulatedCrash(BaseException):
    """The process died here. A BaseException, so no `except Exception` swallows it."""


@dataclass
class SimImage:
    format: str
    backing: str | None
    backing_format: str | None
    virtual_size: int
    clusters: dict[int, int] = field(default_factory=dict)
    inode: int = 0
    links: int = 1
    # A qcow2 header a guest wrote into a raw disk: (backing it names); only probing sees it.
    forged_backing: str | None = None
    # The ticks of the storage's clock at the last write of its content (mtime) and the last
    # change of anything about it (ctime); set by SimulatedStorage.
    mtime: int = 0
    ctime: int = 0

    @property
    def allocated(self) -> int:
        return len(self.clusters) * CLUSTER


@dataclass
class SimulatedScan:
    """What a header scan of some directories found: file -> the file its header names, and
    which of those named files are not there (the rule of adapters/storage/qcow2_headers.py)."""

    backings: dict[str, str]
    resolve: Callable[[str], str]
    missing: frozenset[str] = frozenset()

    def dependants(self, image: str, known: Collection[str]) -> list[str]:
        return self.dependants_of([image], known)[image]

    def dependants_of(self, images: Iterable[str], known: Collection[str]) -> OnDemand:
        ours = {self.resolve(k) for k in known}
        above_of: dict[str, list[str]] = {}  # backing -> the files naming it, once per scan
        for file, backing in self.backings.items():
            above_of.setdefault(backing, []).append(file)
        resting_on_missing = sorted(f for f, b in self.backings.items() if b in self.missing)
        return OnDemand(images, lambda image: self._dependants(image, ours, above_of, resting_on_missing))

    def _dependants(
        self, image: str, ours: set[str], above_of: dict[str, list[str]], resting_on_missing: list[str]
    ) -> list[str]:
        start = self.resolve(image)
        seen = {start}
        found: list[str] = []
        frontier = [start]
        while frontier:
            above = sorted({f for b in frontier for f in above_of.get(b, ())
                            if f not in ours and f not in seen})
            found += above
            if frontier == [start]:
                maybe = [f for f in resting_on_missing if f not in ours and f not in seen | set(above)]
                found += [f"{f} (its backing file {self.backings[f]} is missing: it may rest on "
                          "this image)" for f in maybe]
                above += maybe
            seen.update(above)
            frontier = above
        return found


class SimulatedStorage:
    device = 4242
    root = ""  # every path is absolute in one simulated filesystem (snapledger.testing's ByteStorage)

    def __init__(self) -> None:
        self.files: dict[str, SimImage] = {}
        self.links: dict[str, str] = {}  # simulated symlinks: path -> absolute target
        self._inodes = itertools.count(1000)
        self._ticks = itertools.count(1)  # the files' clock
        self._calls = 0
        self._opens = 0
        self.fail_at: int | None = None
        self.crash_at: int | None = None
        self.busy_at: int | None = None
        self.bytes_written = 0
        self.holders: dict[str, str] = {}  # path -> who holds it open ("writer"/"reader" + name)
        self.tool_missing = False  # qemu-img not on PATH: what it would do raises ToolMissing

    # ---- what tests and users do outside snapledger ----------------------------------

    def make_image(
        self,
        path: str,
        virtual_size: int,
        clusters: dict[int, int] | None = None,
        backing: str | None = None,
        fmt: str = "qcow2",
    ) -> None:
        if path in self.files:
            raise StorageError(f"{path} exists")
        backing_format = self._get(backing).format if backing is not None else None
        self._new(path, SimImage(
            fmt, backing, backing_format, virtual_size, dict(clusters or {}), next(self._inodes)
        ))

    def write(self, path: str, cluster: int, pattern: int) -> None:
        image = self._get(path)
        if not 0 <= cluster < image.virtual_size // CLUSTER:
            raise StorageError(f"cluster {cluster} is outside {path}")
        image.clusters[cluster] = pattern
        self.modified(image)

    def modified(self, image: SimImage) -> None:
        """`image`'s content was written: its mtime and ctime move."""
        image.mtime = image.ctime = next(self._ticks)

    def changed(self, image: SimImage) -> None:
        """Only `image`'s metadata changed (links, mode, owner): its ctime moves."""
        image.ctime = next(self._ticks)

    def chmod(self, path: str) -> None:
        """`chmod` (or chown, or setfattr) of `path`, even to what it was: only its ctime moves."""
        self.changed(self._get(path))

    def read(self, path: str, cluster: int) -> int:
        current: str | None = path
        while current is not None:
            image = self._get(current)
            if cluster in image.clusters:
                return image.clusters[cluster]
            current = image.backing
        return 0

    def read_all(self, path: str) -> dict[int, int]:
        """Every non-zero cluster as read through the chain."""
        layers = []
        current: str | None = path
        while current is not None:
            image = self._get(current)
            layers.append(image.clusters)
            current = image.backing
        content: dict[int, int] = {}
        for layer in reversed(layers):  # upper layers win
            content.update(layer)
        limit = self._get(path).virtual_size // CLUSTER
        return {c: v for c, v in content.items() if v and c < limit}

    def hard_link(self, path: str) -> None:
        """Another name for `path` now exists (outside the directories snapledger looks at)."""
        image = self._get(path)
        image.links += 1
        self.changed(image)

    def unlink_name(self, path: str) -> None:
        """The other name `hard_link` made is removed again (the link count, and the ctime, move)."""
        image = self._get(path)
        assert image.links > 1, f"{path} has no other name"
        image.links -= 1
        self.changed(image)

    def hold(self, path: str, writing: bool = True) -> None:
        """Another process opens `path` (for writing, or only reading) and keeps it open."""
        self._get(path)
        self.holders[self.resolve(path)] = "writer" if writing else "reader"

    def release(self, path: str) -> None:
        self.holders.pop(self.resolve(path), None)

    def forge_header(self, path: str, backing: str | None) -> None:
        """A guest writes a qcow2 header naming `backing` at offset 0 of raw disk `path`."""
        image = self._get(path)
        assert image.format == "raw", "only a raw disk's guest can write a header at offset 0"
        image.forged_backing = backing
        image.clusters[0] = 0x51  # the header's bytes are the guest's data in cluster 0
        self.modified(image)

    def paths(self) -> list[str]:
        """Every file there is."""
        return sorted(self.files)

    def symlink(self, link: str, target: str) -> None:
        """`link` (a file or directory name) now leads to `target`."""
        self.links[link] = target

    def inject(
        self, *, fail_at: int | None = None, crash_at: int | None = None, busy_at: int | None = None
    ) -> None:
        """Fail or crash at the k-th mutating call from now (1 = the next one), or find the
        image locked at the k-th call that opens images (merges and rebases)."""
        self._calls = 0
        self._opens = 0
        self.fail_at = fail_at
        self.crash_at = crash_at
        self.busy_at = busy_at

    # ---- the storage port ------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return path in self.files or self.resolve(path) in self.files

    def resolve(self, path: str) -> str:
        if not self.links:
            return path
        for _ in range(40):
            parts = path.split("/")
            for i in range(2, len(parts) + 1):
                prefix = "/".join(parts[:i])
                if prefix in self.links:
                    path = posixpath.normpath(posixpath.join(self.links[prefix], *parts[i:]))
                    break
            else:
                return path
        raise StorageError(f"{path}: too many levels of symbolic links")

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        self._tool()
        image = self._get(path)
        backing: str | None
        backing_format: str | None
        if fmt is None and image.forged_backing is not None:  # a probe is fooled by the header
            fmt, backing, backing_format = "qcow2", image.forged_backing, "qcow2"
        elif fmt is None or fmt == image.format:
            fmt, backing, backing_format = image.format, image.backing, image.backing_format
        elif fmt == "raw":  # any file opens as raw: its bytes, no backing
            backing, backing_format = None, None
        else:
            raise StorageError(f"{path} is not in {fmt} format")
        return ImageFacts(
            path,
            fmt,
            backing,
            backing_format,
            image.virtual_size,
            image.allocated,
            self.device,
            image.inode,
            HEADER + image.allocated,
            EPOCH_NS + image.mtime * TICK_NS,
            EPOCH_NS + image.ctime * TICK_NS,
        )

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        confine = confinement(self.resolve, within)
        confine(path, None)
        chain = [self.inspect(path, fmt)]
        while (backing := chain[-1].backing) is not None:
            if len(chain) > 1000:
                raise StorageError(f"backing chain of {path} is too long or loops")
            confine(backing, chain[-1].path)
            if chain[-1].backing_format is None:
                raise StorageError(f"{chain[-1].path} does not record its backing file's format")
            chain.append(self.inspect(backing, chain[-1].backing_format))
        return chain

    def sharing(self, path: str) -> Sharing:
        image = self._get(path)
        held = self.holders.get(self.resolve(path))
        return Sharing(
            links=image.links,
            writer="another process" if held == "writer" else None,
            reader="another process" if held is not None else None,
        )

    def create_overlay(
        self, path: str, backing: str, backing_format: str, virtual_size: int
    ) -> None:
        self._tool()
        try:
            self._fault()
        except SimulatedCrash:  # killed as qemu-img began: an empty file is left
            if path not in self.files:
                self._new(path, SimImage("partial", None, None, virtual_size, {}, next(self._inodes)))
            raise
        if path in self.files:
            raise StorageError(f"{path} exists")
        below = self._get(backing)
        if below.format != backing_format:
            raise StorageError(f"{backing} is {below.format}, not {backing_format}")
        self._new(path, SimImage("qcow2", backing, backing_format, virtual_size, {}, next(self._inodes)))

    def scan(self, directories: Iterable[str]) -> SimulatedScan:
        within = [self.resolve(d) for d in directories]
        backings: dict[str, str] = {}
        for path, image in self.files.items():
            named = image.forged_backing or image.backing  # a header is read, not a format
            if named is not None and is_within(self.resolve(path), within):
                backings[self.resolve(path)] = self.resolve(named)
        there = {self.resolve(path) for path in self.files}
        missing = frozenset(b for b in backings.values() if b not in there)
        return SimulatedScan(backings, self.resolve, missing)

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        self._tool()
        image = self._opened(top, fmt)
        self._locked(top, base)
        if image.backing != base:
            raise StorageError(f"{base} is not the backing file of {top}")
        target = self._get(base)
        self._copy(list(image.clusters.items()), target)
        self.modified(target)  # opened for writing and flushed, even with nothing to move

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._tool()
        target = self._opened(image, fmt)
        self._locked(image)
        chain: list[str] = []
        current = target.backing
        while current is not None and current != new_backing:
            chain.append(current)
            current = self._get(current).backing
        if current != new_backing:
            raise StorageError(f"{new_backing} is not below {image}")
        missing: dict[int, int] = {}
        for path in reversed(chain):  # upper layers win
            missing.update(self._get(path).clusters)
        moves = [(c, v) for c, v in sorted(missing.items()) if c not in target.clusters]
        # Killed mid-way, QEMU 7.2 can leave the header naming the new backing with only part
        # of the data mapped (it writes the header before its cached L2 tables): the worst case
        # is what a crash here leaves.
        self._copy(moves, target, header=(new_backing, new_backing_format))
        target.backing, target.backing_format = new_backing, new_backing_format
        self.modified(target)  # its header at least, even with no cluster to move

    def remove_unfinished(self, path: str) -> bool:
        image = self.files.get(path)
        if image is None or image.clusters or image.format not in ("partial", "qcow2"):
            return False
        del self.files[path]
        return True

    def repair(self, path: str, *, fmt: str) -> None:
        self._tool()
        # nothing to put right (the simulation keeps no metadata cache), but `qemu-img check -r`
        # opens the image for writing: counted as a write, so what reads its facts must look again
        self.modified(self._opened(path, fmt))

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        self._tool()
        target = self._opened(image, fmt)
        over = {**self.read_all(backing), **target.clusters}
        limit = target.virtual_size // CLUSTER
        return self.read_all(image) == {c: v for c, v in over.items() if v and c < limit}

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._tool()
        self._fault(opens_images=True)
        target = self._opened(image, fmt)
        self._locked(image)
        target.backing, target.backing_format = new_backing, new_backing_format
        self.modified(target)

    def delete(self, path: str) -> None:
        self._fault()
        self._get(path)
        del self.files[path]

    # ---- internals -------------------------------------------------------------------

    def _new(self, path: str, image: SimImage) -> None:
        self.files[path] = image
        self.modified(image)

    def check_tools(self) -> None:
        self._tool()

    def _tool(self) -> None:
        if self.tool_missing:
            raise ToolMissing("can't run qemu-img: No such file or directory (simulated)")

    def _opened(self, path: str, fmt: str) -> SimImage:
        image = self._get(path)
        if image.format != fmt:
            raise StorageError(f"{path} is not in {fmt} format")
        return image

    def _locked(self, *paths: str) -> None:
        """qemu-img takes QEMU's locks on what it writes: another holder makes it fail."""
        for path in paths:
            if self.resolve(path) in self.holders:
                raise ImageInUse(f"another process still holds {path}")

    def _get(self, path: str) -> SimImage:
        try:
            return self.files[path] if path in self.files else self.files[self.resolve(path)]
        except KeyError:
            raise StorageError(f"{path}: no such file") from None

    def _fault(
        self,
        half_done: list[tuple[int, int]] | None = None,
        target: SimImage | None = None,
        opens_images: bool = False,
        header: tuple[str | None, str | None] | None = None,
    ) -> None:
        self._calls += 1
        self._opens += opens_images
        if opens_images and self._opens == self.busy_at:
            self.busy_at = None
            raise ImageInUse(f"another process still holds the image (injected at call {self._calls})")
        if self._calls == self.fail_at:
            self.fail_at = None
            raise StorageError(f"injected failure at call {self._calls}")
        if self._calls == self.crash_at:
            self.crash_at = None
            if half_done and target is not None:
                for cluster, value in half_done[: len(half_done) // 2]:
                    target.clusters[cluster] = value
                self.modified(target)
            if header is not None and target is not None:
                target.backing, target.backing_format = header
                self.modified(target)
            raise SimulatedCrash(f"injected crash at call {self._calls}")

    def _copy(
        self, moves: list[tuple[int, int]], target: SimImage,
        header: tuple[str | None, str | None] | None = None,
    ) -> None:
        self._fault(moves, target, opens_images=True, header=header)
        for cluster, value in moves:
            target.clusters[cluster] = value
        if moves:
            self.modified(target)
        self.bytes_written += len(moves) * CLUSTER
