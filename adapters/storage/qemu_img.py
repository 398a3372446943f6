"""A storage adapter on real qcow2 files: the StoragePort carried out with qemu-img.

Every qemu-img run gets an argument list (never a shell) and a timeout; any failure is raised as
StorageError with one line that includes qemu-img's stderr (qemu_img_runner.py runs it).

Safety rules, beyond what qemu-img checks itself:
- Image and backing paths must be plain absolute local paths: no protocol or pseudo-protocol
  (`json:`, `nbd:`, `http:`, `file:` — any ':' is refused), normalised, naming a regular file
  (never a block or character device, FIFO or directory), and inside `allowed_dirs` when given
  (checked on the resolved path, so a symlink can't lead outside).
- Only qcow2 and raw are accepted, and a qcow2 image with an external data file is refused.
- `qemu-img info` and `qemu-img map` parse untrusted image metadata, so they run under resource
  limits (CPU seconds, address space, no core files), like oslo.concurrency's prlimit wrapper.
- The allocation of one layer is read with the image opened alone (`"backing": null`), so
  inspecting an image never opens its backing chain.
- Formats are never guessed: every image the ledger knows is opened with its recorded format
  (`-f`, also for `info` and `map`), and every backing file with the format its overlay records
  (`-F`); a chain whose overlay does not record its backing file's format is refused, because
  qemu-img would probe it. Only a file the ledger does not know yet (a disk at adopt, an image
  swapped in) is probed, once, to learn its format. A raw disk whose guest wrote a qcow2 header
  therefore stays raw.
- New overlays are created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW) and `qemu-img create -u`
  writes into that very file through /proc/self/fd/N (Linux), so a path swapped in between can't
  redirect the write; with -u it opens nothing else (the backing was checked with `info`).
- Loops in a backing chain are found by path and by file identity (device, inode).
- `inspect_chain(path, within=DIRS)` checks each file of the chain, resolved, against DIRS before
  opening it (OutsideAllowedDirs): the service confines every chain to its VM's directories.
- A qemu-img that can't get an image lock (another process holds the image) raises ImageInUse
  (exit 4): qemu-img did nothing, and the step can be retried.
- `pull` is a safe `qemu-img rebase` in place: the image keeps its inode. When the new backing is
  in the image's chain, qemu-img (7.2, measured) only visits clusters allocated above it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from snapledger.adapters.service.ports import MergeListener, Sharing
from snapledger.adapters.storage import qemu_locks
from snapledger.adapters.storage.qemu_img_answers import (
    FORMATS,
    QemuImgAnswers,
    recorded_backing_format,
)
from snapledger.adapters.storage.qemu_img_runner import Progress, QemuImgRunner
from snapledger.adapters.storage.settled import SettledAnswers
from snapledger.domain.errors import StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.names import confinement

from .qcow2_headers import QCOW2_MAGIC, DependantIndex

# An empty overlay as qemu-img create makes it is 192 KiB; a create cut short leaves less.
UNFINISHED_AT_MOST = 1 << 20
GIB = 1 << 30


class QemuImgStorage(QemuImgAnswers):
    """StoragePort on qcow2 files with qemu-img (tested with QEMU 7.2)."""

    def __init__(
        self,
        allowed_dirs: Iterable[str] | None = None,
        *,
        qemu_img: str = "qemu-img",
        timeout: float = 60.0,
        merge_timeout: float = 6 * 3600.0,
        probe_cpu_seconds: int = 30,
        probe_address_space: int = 1 * GIB,
        max_chain: int = 1000,
        file_mode: int = 0o644,
        read_in_process: bool = True,
    ) -> None:
        self.allowed_dirs: tuple[str, ...] | None = None
        if allowed_dirs is not None:
            dirs = []
            for directory in allowed_dirs:
                if not os.path.isabs(directory):
                    raise StorageError(f"allowed directory {directory!r} is not absolute")
                dirs.append(os.path.realpath(directory))
            self.allowed_dirs = tuple(dirs)
        self.qemu_img = QemuImgRunner(
            qemu_img,
            timeout=timeout,
            merge_timeout=merge_timeout,
            probe_cpu_seconds=probe_cpu_seconds,
            probe_address_space=probe_address_space,
        )
        self.max_chain = max_chain
        self.file_mode = file_mode
        # A plain qcow2 layer's info and map read in process (qcow2_layer.py); False: qemu-img
        # is asked about every file, as before issue 13 (tests that stage qemu-img's own doings).
        self.read_in_process = read_in_process
        # Told how a running merge goes (the CLI shows its progress).
        self.progress: MergeListener | None = None
        # qemu-img's answers about files that have not changed since: see _remembered.
        self._answers = SettledAnswers()

    # ---- the storage port ------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def check_tools(self) -> None:
        self.qemu_img.check_available()

    def resolve(self, path: str) -> str:
        return os.path.realpath(path)

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        return self._inspect(path, fmt)

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        confine = confinement(self.resolve, within)
        confine(path, None)
        chain = [self._inspect(path, fmt)]
        seen = {path, (chain[0].device, chain[0].inode)}
        while (backing := chain[-1].backing) is not None:
            if backing in seen:
                raise StorageError(f"backing chain of {path} loops at {backing}")
            if len(chain) >= self.max_chain:
                raise StorageError(f"backing chain of {path} is longer than {self.max_chain}")
            confine(backing, chain[-1].path)
            facts = self._inspect(backing, recorded_backing_format(chain[-1]))
            if (facts.device, facts.inode) in seen:  # the same file under another name
                raise StorageError(f"backing chain of {path} loops at {backing}")
            seen |= {backing, (facts.device, facts.inode)}
            chain.append(facts)
        return chain

    def create_overlay(
        self, path: str, backing: str, backing_format: str, virtual_size: int
    ) -> None:
        self._check_new_path(path)
        if backing_format not in FORMATS:
            raise StorageError(f"backing format {backing_format!r} is not one of {sorted(FORMATS)}")
        # The backing file is opened with the format the ledger recorded, never probed (a raw
        # disk whose guest wrote a qcow2 header stays raw); qemu-img create then runs with -u, so
        # it opens nothing but the new file.
        self._backing_of(backing, self._info(backing, backing_format))
        try:
            fd = os.open(
                path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                self.file_mode,
            )
        except OSError as error:
            raise StorageError(f"can't create {path} exclusively: {error.strerror}") from None
        ours = os.fstat(fd)
        try:
            self.qemu_img.run(
                "create",
                path,
                ["-q", "-u", "-f", "qcow2", "-F", backing_format, "-b", backing,
                 f"/proc/self/fd/{fd}", str(virtual_size)],
                pass_fds=(fd,),
            )
            seen = os.lstat(path)
            if (seen.st_dev, seen.st_ino) != (ours.st_dev, ours.st_ino):
                raise StorageError(f"{path} was replaced while it was being created")
        except BaseException:
            self._unlink_if_ours(path, ours)
            raise
        finally:
            os.close(fd)

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        chain = self._info_chain(top, fmt)
        if len(chain) < 2 or chain[1][0] != base:
            raise StorageError(f"{base} is not the backing file of {top}")
        with self._told("commit", top, base, lambda: self._allocated_or_0(top, fmt)) as progress:
            self.qemu_img.merge("commit", top, ["-d", "-f", fmt, "-b", base, top], progress)

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        chain = self._info_chain(image, fmt)
        below = [p for p, _ in chain[1:]]
        if new_backing is None:
            args = ["-b", ""]
        else:
            if new_backing not in below:
                raise StorageError(f"{new_backing} is not below {image}")
            recorded = chain[below.index(new_backing)][1].get("backing-filename-format")
            if new_backing_format is None or new_backing_format != recorded:
                raise StorageError(f"{new_backing} is {recorded}, not {new_backing_format}")
            args = ["-b", new_backing, "-F", new_backing_format]
        pulled = chain[1 : 1 + (below.index(new_backing) if new_backing is not None else len(below))]

        def total() -> int:  # at most what the pulled layers hold: qemu-img copies what `image` lacks
            return sum(self._allocated_or_0(path, str(info.get("format"))) for path, info in pulled)

        source = pulled[0][0] if pulled else image
        with self._told("pull", source, image, total) as progress:
            self.qemu_img.merge("rebase", image, ["-f", fmt, *args, image], progress)

    @contextmanager
    def _told(
        self, step: str, source: str, target: str, total: Callable[[], int]
    ) -> Iterator[Progress | None]:
        """`self.progress`, if any, told that the merge `step` of `source` into `target` starts
        and ends; what to tell it the fraction done with."""
        listener = self.progress
        if listener is None:
            yield None
            return
        listener.started(step, source, target, total())
        try:
            yield listener.advanced
        finally:
            listener.finished()

    def _allocated_or_0(self, path: str, fmt: str) -> int:
        """A merge's size, for its progress only: 0 when it can't be told."""
        try:
            return self._allocated(path, fmt)
        except StorageError:
            return 0

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._info(image, fmt)
        if new_backing is None:
            args = ["-b", ""]
        else:
            if new_backing_format not in FORMATS:
                raise StorageError(f"backing format {new_backing_format!r} is not one of {sorted(FORMATS)}")
            self._info(new_backing, new_backing_format)  # it opens with the format it will have
            args = ["-b", new_backing, "-F", new_backing_format]
        self.qemu_img.run("rebase", image, ["-q", "-u", "-f", fmt, *args, image])

    def remove_unfinished(self, path: str) -> bool:
        self._check_path(path)
        try:
            seen = os.lstat(path)
        except OSError:
            return False
        if (not stat.S_ISREG(seen.st_mode) or seen.st_nlink != 1
                or seen.st_size > UNFINISHED_AT_MOST):
            return False  # not a file a create of ours could have left, or not ours alone
        if seen.st_size:
            try:
                with open(path, "rb") as opened:
                    if opened.read(4) != QCOW2_MAGIC:
                        return False  # anyone's bytes (a raw file): qemu-img writes the magic first
            except OSError:
                return False
            try:
                if self._allocated(path, "qcow2") > 0:
                    return False  # a whole image with data in it: not what a create left
            except StorageError:
                pass  # a header only part written: a create killed before it finished
        self._unlink_if_ours(path, seen)
        return not os.path.lexists(path)

    def repair(self, path: str, *, fmt: str) -> None:
        # qemu-img check -r all on the image alone: leaked or wrongly counted clusters a killed
        # qemu-img left (its caches of L2 tables and refcounts were never written) are put right
        if fmt == "raw":
            return  # no metadata of its own
        self._check_file(path)
        spec = {"driver": fmt, "file": {"driver": "file", "filename": path}, "backing": None}
        self.qemu_img.run("check", path, ["-q", "-r", "all", "json:" + json.dumps(spec)], long=True)

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        # qemu-img compare of the image as its header says against the image over `backing`
        self._check_file(image)
        self._check_file(backing)
        if fmt not in FORMATS or backing_format not in FORMATS:
            raise StorageError(f"{image}: formats {fmt!r}/{backing_format!r} are not accepted")
        now = {"driver": fmt, "file": {"driver": "file", "filename": image}}
        over = {**now, "backing": {"driver": backing_format,
                                   "file": {"driver": "file", "filename": backing}}}
        code, _ = self.qemu_img.run(
            "compare", image, ["-U", "-q", "json:" + json.dumps(now), "json:" + json.dumps(over)],
            long=True, succeeds=(0, 1),
        )
        return code == 0

    def sharing(self, path: str) -> Sharing:
        self._check_file(path)
        return qemu_locks.sharing(path)

    def scan(self, directories: Iterable[str]) -> DependantIndex:
        return DependantIndex.scan(directories)

    def delete(self, path: str) -> None:
        self._check_path(path)
        try:
            seen = os.lstat(path)
        except OSError as error:
            raise StorageError(f"can't delete {path}: {error.strerror}") from None
        if stat.S_ISLNK(seen.st_mode):
            raise StorageError(f"{path} is a symlink: not deleted")
        if not stat.S_ISREG(seen.st_mode):
            raise StorageError(f"{path} is not a regular file: not deleted")
        try:
            os.unlink(path)
        except OSError as error:
            raise StorageError(f"can't delete {path}: {error.strerror}") from None

    # ---- paths of its own ----------------------------------------------------------------

    def _check_new_path(self, path: str) -> None:
        self._check_path(path)
        try:
            os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(f"{path}: {error.strerror}") from None
        raise StorageError(f"{path} exists (or is a symlink): not created")

    @staticmethod
    def _unlink_if_ours(path: str, ours: os.stat_result) -> None:
        try:
            seen = os.lstat(path)
            if (seen.st_dev, seen.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(path)
        except OSError:
            pass

__all__ = ["QemuImgStorage"]
