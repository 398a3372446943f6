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
from collections.abc import Callable, Iterable
from typing import Any

from snapledger.adapters.service.ports import Sharing
from snapledger.adapters.storage import qemu_locks
from snapledger.adapters.storage.qemu_img_runner import Progress, QemuImgRunner
from snapledger.adapters.storage.settled import SettledAnswers
from snapledger.domain.errors import StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.names import confinement, is_within

from .qcow2_headers import QCOW2_MAGIC, DependantIndex

FORMATS = frozenset({"qcow2", "raw"})
# An empty overlay as qemu-img create makes it is 192 KiB; a create cut short leaves less.
UNFINISHED_AT_MOST = 1 << 20
GIB = 1 << 30


def _unrecorded_backing_format(image: str, backing: str, found: object) -> StorageError:
    return StorageError(
        f"{image} does not record a usable format for its backing file {backing} ({found!r}); "
        f"qemu-img would probe it: refused (record it with `qemu-img rebase -u -f qcow2 -F FORMAT "
        f"-b {backing} {image}`)"
    )


def _recorded_backing_format(overlay: ImageFacts) -> str:
    fmt = overlay.backing_format
    if fmt is None or fmt not in FORMATS:
        raise _unrecorded_backing_format(overlay.path, str(overlay.backing), fmt)
    return fmt


class QemuImgStorage:
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
        # Told the fraction done of a running merge (the CLI draws a progress bar with it).
        self.progress: Progress | None = None
        # qemu-img's answers about files that have not changed since: see _remembered.
        self._answers = SettledAnswers()

    # ---- the storage port ------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

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
            facts = self._inspect(backing, _recorded_backing_format(chain[-1]))
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
        self.qemu_img.merge("commit", top, ["-d", "-f", fmt, "-b", base, top], self.progress)

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        chain = self._info_chain(image, fmt)
        if new_backing is None:
            args = ["-b", ""]
        else:
            below = [p for p, _ in chain[1:]]
            if new_backing not in below:
                raise StorageError(f"{new_backing} is not below {image}")
            recorded = chain[below.index(new_backing)][1].get("backing-filename-format")
            if new_backing_format is None or new_backing_format != recorded:
                raise StorageError(f"{new_backing} is {recorded}, not {new_backing_format}")
            args = ["-b", new_backing, "-F", new_backing_format]
        self.qemu_img.merge("rebase", image, ["-f", fmt, *args, image], self.progress)

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

    # ---- paths -----------------------------------------------------------------------

    def _check_path(self, path: str) -> None:
        """A plain, absolute, normalised local path, inside the allowed directories."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise StorageError(f"{path!r} is not an absolute local file path")
        if ":" in path:
            raise StorageError(f"{path!r} looks like a protocol or pseudo-protocol (contains ':')")
        if "\0" in path or os.path.normpath(path) != path:
            raise StorageError(f"{path!r} is not a normalised file path")
        if self.allowed_dirs is not None:
            real = os.path.realpath(path)
            if not is_within(real, self.allowed_dirs):
                raise StorageError(f"{path} (resolved {real}) is outside the allowed directories")

    def _check_file(self, path: str) -> os.stat_result:
        self._check_path(path)
        try:
            seen = os.stat(path)
        except OSError as error:
            raise StorageError(f"{path}: {error.strerror}") from None
        if stat.S_ISBLK(seen.st_mode) or stat.S_ISCHR(seen.st_mode):
            raise StorageError(f"{path} is a device node: refused")
        if not stat.S_ISREG(seen.st_mode):
            raise StorageError(f"{path} is not a regular file: refused")
        return seen

    def _identity(self, path: str) -> tuple[int, int]:
        seen = self._check_file(path)
        return seen.st_dev, seen.st_ino

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

    # ---- qemu-img's answers ------------------------------------------------------------

    def _remembered(self, what: str, path: str, fmt: str | None, ask: Callable[[], Any]) -> Any:
        """qemu-img's answer about `path`, asked again only if the file changed (settled.py);
        the file is checked first, every time."""
        return self._answers.answer((what, path, fmt), self._check_file(path), ask)

    def _info(self, path: str, fmt: str | None) -> dict[str, Any]:
        """`qemu-img info` of one file (never opens its backing), under resource limits, opened
        as `fmt` (None: probed, only for a file the ledger does not know yet)."""
        info: dict[str, Any] = self._remembered("info", path, fmt, lambda: self._ask_info(path, fmt))
        return info

    def _ask_info(self, path: str, fmt: str | None) -> dict[str, Any]:
        self._check_file(path)
        if fmt is not None and fmt not in FORMATS:
            raise StorageError(f"{path}: format {fmt!r} is not one of {sorted(FORMATS)}")
        args = ["--output=json", "-U"] + (["-f", fmt] if fmt else []) + [path]
        _, out = self.qemu_img.run("info", path, args, limited=True)
        try:
            info = json.loads(out)
        except ValueError:
            raise StorageError(f"qemu-img info {path}: output is not JSON") from None
        if not isinstance(info, dict):
            raise StorageError(f"qemu-img info {path}: unexpected output")
        if info.get("format") not in FORMATS:
            raise StorageError(f"{path} is {info.get('format')!r}: only qcow2 and raw are accepted")
        if not isinstance(info.get("virtual-size"), int):
            raise StorageError(f"qemu-img info {path}: no virtual size")
        specific = info.get("format-specific") or {}
        data = specific.get("data") if isinstance(specific, dict) else None
        if isinstance(data, dict) and data.get("data-file"):
            raise StorageError(f"{path} has an external data file {data['data-file']!r}: refused")
        return info

    def _backing_of(self, path: str, info: dict[str, Any]) -> str | None:
        """The backing file as an absolute path; anything that is not a plain file path is refused."""
        name = info.get("full-backing-filename") or info.get("backing-filename")
        if not name:
            return None
        if not isinstance(name, str):
            raise StorageError(f"qemu-img info {path}: backing file name is not a string")
        if ":" in name:
            raise StorageError(f"{path}: backing {name!r} is not a plain local file path: refused")
        if not name.startswith("/"):
            name = os.path.join(os.path.dirname(path), name)
        name = os.path.normpath(name)
        try:
            self._check_path(name)
        except StorageError as error:
            raise StorageError(f"{path}: backing refused: {error}") from None
        return name

    def _info_chain(self, path: str, fmt: str | None) -> list[tuple[str, dict[str, Any]]]:
        """(path, `qemu-img info`) of each file in the chain, checked before qemu-img opens it."""
        chain = [(path, self._info(path, fmt))]
        seen = {self._identity(path)}
        while (backing := self._backing_of(*chain[-1])) is not None:
            current, info = chain[-1]
            if self._identity(backing) in seen:
                raise StorageError(f"backing chain of {path} loops at {backing}")
            if len(chain) >= self.max_chain:
                raise StorageError(f"backing chain of {path} is longer than {self.max_chain}")
            seen.add(self._identity(backing))
            backing_format = info.get("backing-filename-format")
            if backing_format not in FORMATS:
                raise _unrecorded_backing_format(current, backing, backing_format)
            chain.append((backing, self._info(backing, backing_format)))
        return chain

    def _allocated(self, path: str, fmt: str) -> int:
        """Bytes holding data in this layer alone: the image is opened without its backing."""
        allocated: int = self._remembered("map", path, fmt, lambda: self._ask_allocated(path, fmt))
        return allocated

    def _ask_allocated(self, path: str, fmt: str) -> int:
        spec: dict[str, Any] = {"driver": fmt, "file": {"driver": "file", "filename": path}}
        if fmt == "qcow2":
            spec["backing"] = None
        _, out = self.qemu_img.run(
            "map", path, ["--output=json", "-U", "json:" + json.dumps(spec)], limited=True
        )
        try:
            extents = json.loads(out)
            return sum(
                int(e["length"]) for e in extents if e.get("data") and e.get("depth", 0) == 0
            )
        except (ValueError, TypeError, KeyError):
            raise StorageError(f"qemu-img map {path}: unexpected output") from None

    def _inspect(self, path: str, fmt: str | None) -> ImageFacts:
        info = self._info(path, fmt)
        backing = self._backing_of(path, info)
        backing_format = info.get("backing-filename-format") if backing is not None else None
        if backing_format is not None and not isinstance(backing_format, str):
            raise StorageError(f"qemu-img info {path}: backing format is not a string")
        allocated = self._allocated(path, info["format"])
        seen = self._check_file(path)
        return ImageFacts(
            path,
            info["format"],
            backing,
            backing_format,
            info["virtual-size"],
            allocated,
            seen.st_dev,
            seen.st_ino,
            seen.st_size,
            seen.st_mtime_ns,
            seen.st_ctime_ns,
        )


__all__ = ["QemuImgStorage"]
