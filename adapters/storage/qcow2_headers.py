"""The qcow2 files whose backing chain reaches an image, found by reading headers in process.

Before an image is deleted or changed, the service scans the VM's directories for files the
ledger doesn't know that depend on it (a user's own `qemu-img create -b base.s1 ...`): one open,
fstat and read per file, no process.

- Read: the header's first 20 bytes (magic, version 2 or 3, backing name offset and size) and
  the name, at most 1023 bytes (QEMU refuses longer), as QEMU reads it: up to the first NUL and
  the end of the file (QEMU reads zeros past it), so a name at or past the end is no backing.
- A raw file whose first bytes look like a qcow2 header is taken for qcow2: only the format its
  user passes could tell, and counting it as a dependant is the safe mistake.
- Names, as QEMU resolves them: relative to the directory of the image as named (each name a
  file is found under); `file:` stripped; in `json:{...}` every string under a "filename" key
  (flattened `x.filename` too) and every string "file"; other protocols (`nbd:`) not local.
- Files are matched by identity (st_dev, st_ino), or resolved path when missing, directories
  resolved as the kernel does (`dir/link/../base` is not what normpath says).
- Only regular files are opened, with O_NONBLOCK, and fstat must agree: a FIFO, socket or
  device never blocks the scan or is read, even one that replaced a file after the listing.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import struct
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from snapledger.adapters.host.processes import files_open_here
from snapledger.adapters.service.ports import OnDemand
from snapledger.domain.errors import Refused

QCOW2_MAGIC = b"QFI\xfb"
MAX_BACKING_NAME = 1023
_HEADER = struct.Struct(">4sIQI")  # magic, version, backing_file_offset, backing_file_size
# One read covers the header and, in the files qemu-img writes, the backing name after it.
_FIRST_READ = 4096
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

Node: TypeAlias = tuple[int, int] | str  # (st_dev, st_ino), or the resolved path of no file


class ScanTooLarge(Refused):
    """More files than `max_files`: an incomplete scan can't show that nothing depends on an image."""


@dataclass(frozen=True)
class BackingReference:
    """What a qcow2 header names as its backing file."""

    spelled: str  # as the header spells it ("" for none; undecodable bytes kept by surrogateescape)
    names: tuple[str, ...]  # the local files in it: absolute, or relative to the image's directory


_NO_BACKING = BackingReference("", ())


def _absolute(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def _normal(path: str) -> str:
    path = os.path.normpath(path)
    return "/" + path.lstrip("/") if path.startswith("//") else path  # POSIX keeps a leading "//"


def _local(name: str) -> list[str]:
    """`name` as a local file, unless it names a protocol (QEMU: a ':' before the first '/')."""
    name = name.split("\0", 1)[0]
    colon, slash = name.find(":"), name.find("/")
    if name.startswith("file:"):
        name = name[len("file:"):]
    elif colon >= 0 and (slash < 0 or colon < slash):
        return []
    return [name] if name else []


def _json_filenames(text: str) -> list[str]:
    """Every string under a "filename" key and every string "file", anywhere in the JSON."""
    try:
        tree: object = json.loads(text)
    except (ValueError, RecursionError):
        return []
    found: list[str] = []
    pending: list[tuple[object, bool]] = [(tree, False)]
    while pending:
        item, under_filename = pending.pop()
        if isinstance(item, str):
            if under_filename:
                found.append(item)
        elif isinstance(item, list):
            pending.extend((value, under_filename) for value in item)
        elif isinstance(item, dict):
            for key, value in item.items():
                last = key.rsplit(".", 1)[-1]
                pending.append((value, under_filename or last == "filename"))
                if last == "file" and isinstance(value, str):
                    found.append(value)
    return found


def reference_of(spelled: str) -> BackingReference:
    """The local files a backing name (as a qcow2 header spells it) refers to."""
    texts = _json_filenames(spelled[5:]) if spelled.startswith("json:") else [spelled]
    return BackingReference(spelled, tuple(dict.fromkeys(n for t in texts for n in _local(t))))


@functools.lru_cache(maxsize=4096)  # most files name one of a few backing files
def _reference_in(raw: bytes) -> BackingReference:
    return reference_of(raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))


def _read_reference(fd: int, size: int) -> BackingReference | None:
    """The backing reference in the qcow2 header of the open file `fd` (`size` bytes long), or
    None if it is not qcow2. Never reads more than the first page and the name."""
    head = os.pread(fd, _FIRST_READ, 0)
    if len(head) < _HEADER.size:
        return None
    magic, version, offset, length = _HEADER.unpack_from(head)
    if magic != QCOW2_MAGIC or version not in (2, 3):
        return None
    if offset == 0 or length == 0 or length > MAX_BACKING_NAME or offset >= size:
        return _NO_BACKING
    in_head = offset + length <= len(head)  # else read apart, short at the end of the file
    return _reference_in(head[offset : offset + length] if in_head else os.pread(fd, length, offset))


_T = TypeVar("_T")


def read_regular_file(
    path: str, read: Callable[[int, int], _T | None], failures: tuple[type[Exception], ...] = (OSError,)
) -> _T | None:
    """`read(fd, size)` on `path` opened for reading without blocking, if it is a regular file
    (fstat must agree: a FIFO or device that replaced it is never read); None if it can't be
    opened, is not regular, or `read` fails with one of `failures`."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        seen = os.fstat(fd)
        return read(fd, seen.st_size) if stat.S_ISREG(seen.st_mode) else None
    except failures:
        return None
    finally:
        os.close(fd)


def read_backing_reference(path: str) -> BackingReference | None:
    """None if `path` is not a readable qcow2 file (raw, truncated, FIFO, device...)."""
    return read_regular_file(path, _read_reference)


def read_backing_names(path: str) -> list[str] | None:
    """None if `path` is not a readable qcow2 file (raw, truncated, FIFO, device...); else the
    local files its header names as backing (usually 0 or 1), absolute and normalised (not
    symlink-resolved), relative names joined to the directory of `path` as named (QEMU's rule)."""
    reference = read_backing_reference(path)
    directory = os.path.dirname(_absolute(path))
    return None if reference is None else [
        _normal(os.path.join(directory, name)) for name in reference.names]


class DependantIndex:
    """The qcow2 files found in some directories and what backs them: a snapshot of the disk at
    scan time (scan again before each decision)."""

    def __init__(self) -> None:
        self.unreadable: list[str] = []  # candidates (files, directories) that could not be read
        self.too_deep: list[str] = []  # directories not entered: deeper than max_depth
        self._references: dict[tuple[int, int], BackingReference] = {}  # the qcow2 files found
        self._names: dict[tuple[int, int], list[tuple[bool, str]]] = {}  # (is a symlink, name)
        self._nodes: dict[str, Node] = {}  # any absolute name -> the file it names
        self._real_dirs: dict[str, str] = {}
        self._backed_by: dict[Node, set[tuple[int, int]]] = {}
        # Files found whose backing file is not there: what they rest on can't be told, so they
        # may rest on any image (a user's overlay moved away for a while, its own overlay left).
        self._missing_backing: dict[tuple[int, int], str] = {}

    @classmethod
    def scan(
        cls, directories: Iterable[str], *, max_depth: int = 8, max_files: int = 200_000
    ) -> DependantIndex:
        """Every regular file under `directories`, symlinked directories followed, each directory
        once, `max_depth` levels down; ScanTooLarge past `max_files` files."""
        index = cls()
        index._walk([_normal(_absolute(d)) for d in directories], max_depth, max_files)
        for node, reference in index._references.items():
            for _, name in index._names[node]:
                directory = os.path.dirname(name)
                for target in reference.names:
                    target = target if target[0] == "/" else os.path.join(directory, target)
                    backing = index._node(target)
                    index._backed_by.setdefault(backing, set()).add(node)
                    if isinstance(backing, str):  # no such file
                        index._missing_backing.setdefault(node, target)
        return index

    def dependants(self, image: str, known: Collection[str]) -> list[str]:
        """Every qcow2 file found whose backing chain reaches `image` through files the ledger
        doesn't know (E2 -> E1 -> image gives [E1, E2]), and every such file whose chain ends in
        a backing file that is missing (it may rest on `image`: named with that backing, next to
        the nearest), with the files resting on those. A `known` file is neither reported nor
        walked through. Nearest first, then by name; each file once, by its own name rather
        than a symlink's, then the smallest."""
        return self.dependants_of([image], known)[image]

    def dependants_of(self, images: Iterable[str], known: Collection[str]) -> OnDemand:
        """`dependants` of each image, `known` resolved once, each image's when first read."""
        known_nodes = {self._node(path) for path in known}
        unresolved = sorted(node for node in self._missing_backing if node not in known_nodes)
        return OnDemand(images, lambda image: self._dependants(image, known_nodes, unresolved))

    def _dependants(
        self, image: str, known_nodes: set[Node], unresolved: list[tuple[int, int]]
    ) -> list[str]:
        start = self._node(image)
        reached: set[Node] = {start}
        level: list[Node] = [start]
        found: list[str] = []
        while level:
            nearer: list[tuple[int, int]] = []
            for node in level:
                for dependant in self._backed_by.get(node, ()):
                    if dependant not in reached and dependant not in known_nodes:
                        reached.add(dependant)
                        nearer.append(dependant)
            found += sorted(self._name(node) for node in nearer)
            if level == [start]:
                maybe = [node for node in unresolved if node not in reached]
                reached.update(maybe)
                nearer += maybe
                found += sorted(
                    f"{self._name(node)} (its backing file {self._missing_backing[node]} is "
                    "missing: it may rest on this image)" for node in maybe
                )
            level = list(nearer)
        return found

    def _name(self, node: tuple[int, int]) -> str:
        return min(self._names[node])[1]

    def _walk(self, roots: list[str], max_depth: int, max_files: int) -> None:
        """Real directories first (depth first, sorted), then the symlinked ones, so a file is
        found under its own directory's name when it can be; no directory is entered twice."""
        own = [(root, 0) for root in reversed(roots)]
        linked: list[tuple[str, int]] = []
        visited: set[tuple[int, int]] = set()
        candidates = 0
        # Files this process has open (the ledger's SQLite files, if they lie here) are never
        # opened again: closing any descriptor of a file drops every POSIX lock this process
        # holds on it, and SQLite's locks are POSIX locks. Such a file is no user's image.
        open_here = files_open_here()
        while own or linked:
            directory, depth = own.pop() if own else linked.pop(0)
            try:
                seen = os.stat(directory)
                if (seen.st_dev, seen.st_ino) in visited or not stat.S_ISDIR(seen.st_mode):
                    continue
                visited.add((seen.st_dev, seen.st_ino))
                with os.scandir(directory) as listing:
                    entries = sorted(listing, key=lambda entry: entry.name)
            except OSError:
                if depth > 0 or os.path.lexists(directory):  # a missing root is skipped
                    self.unreadable.append(directory)
                continue
            real = self._real_dir(directory)
            subdirectories: list[tuple[str, int]] = []
            for entry in entries:
                try:
                    is_link = entry.is_symlink()
                    if entry.is_dir():
                        if depth >= max_depth:
                            self.too_deep.append(entry.path)
                        else:
                            (linked if is_link else subdirectories).append((entry.path, depth + 1))
                        continue
                    if not entry.is_file():  # FIFO, socket, device, dangling symlink
                        continue
                except PermissionError:
                    self.unreadable.append(entry.path)
                    continue
                except OSError:  # a symlink loop, a name gone since the listing
                    continue
                candidates += 1
                if candidates > max_files:
                    raise ScanTooLarge(f"more than {max_files} files under {', '.join(roots)}")
                try:
                    found = entry.stat()
                except OSError:
                    continue
                if (found.st_dev, found.st_ino) in open_here:
                    continue
                self._read(entry.path, os.path.join(real, entry.name), is_link)
            own += reversed(subdirectories)

    def _read(self, path: str, resolved: str, is_link: bool) -> None:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:  # permissions, or gone (or renamed) since it was listed
            self.unreadable.append(path)
            return
        try:
            seen = os.fstat(fd)
            if not stat.S_ISREG(seen.st_mode):
                return
            node = self._nodes[path] = self._nodes[resolved] = (seen.st_dev, seen.st_ino)
            if node not in self._references:
                reference = _read_reference(fd, seen.st_size)
                if reference is None:
                    return
                self._references[node], self._names[node] = reference, []
            self._names[node].append((is_link, path))
        except OSError:
            self.unreadable.append(path)
        finally:
            os.close(fd)

    def _real_dir(self, directory: str) -> str:
        if directory not in self._real_dirs:
            self._real_dirs[directory] = os.path.realpath(directory)
        return self._real_dirs[directory]

    def _node(self, path: str) -> Node:
        """The file `path` names; its directory is resolved as the kernel does (cached: there
        are few directories and many files), `dir/link/../x` included."""
        path = _absolute(path)
        node = self._nodes.get(path)
        if node is None:
            directory, last = os.path.split(path)
            key = (os.path.join(self._real_dir(directory), last) if last not in ("", ".", "..")
                   else os.path.realpath(path))
            node = self._nodes.get(key)
            if node is None:
                try:
                    seen = os.stat(key)
                    node = (seen.st_dev, seen.st_ino)
                except OSError:
                    node = os.path.realpath(key)
            self._nodes[path] = self._nodes[key] = node
        return node


__all__ = ["QCOW2_MAGIC", "BackingReference", "DependantIndex", "ScanTooLarge", "read_backing_names",
           "read_backing_reference", "reference_of"]
