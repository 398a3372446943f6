"""The storage port: what every storage adapter (simulated, qemu-img) implements."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from snapledger.domain.images import ImageFacts


@dataclass(frozen=True)
class Sharing:
    """Who else has a file, as the disk shows it now (never recorded: the world changes)."""

    links: int  # hard links to the file (st_nlink); more than 1: another name shares it
    writer: str | None  # who holds it open for writing (QEMU's write lock), if anyone
    reader: str | None  # who holds it open at all (QEMU's read or write lock), if anyone


class Dependants(Protocol):
    """Image files found in some directories, with the files their headers name as backing."""

    def dependants(self, image: str, known: Collection[str]) -> list[str]:
        """Every file found whose backing chain reaches `image` through files that are not in
        `known` (the images a ledger holds): nearest first. Compared by resolved path."""


class StoragePort(Protocol):
    """Failures raise StorageError; a step that could not start because another process holds
    a lock on an image (a running VM, a qemu-img still running) raises ImageInUse and has done
    nothing. A tool the adapter needs that is missing raises ToolMissing.

    Formats are never guessed: `fmt` is the format the ledger recorded for the image; every
    backing file is opened with the format its overlay records. Only `inspect` and
    `inspect_chain` of a file the ledger does not know yet take `fmt=None` (probed)."""

    def exists(self, path: str) -> bool: ...

    def resolve(self, path: str) -> str:
        """`path` with every symlink resolved (realpath); the file need not exist."""

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        """Facts about one file (its backing is named, never opened); StorageError if it is
        missing or unreadable."""

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        """`path` first, then every backing file down to the bottom image. With `within`, each
        file, `path` included, must resolve inside one of these directories (or below one):
        the first that does not raises OutsideAllowedDirs before it is opened. An overlay that
        does not record its backing file's format is refused (StorageError)."""

    def create_overlay(
        self, path: str, backing: str, backing_format: str, virtual_size: int
    ) -> None:
        """Create `path` exclusively; StorageError if it exists."""

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        """Write `top`'s (format `fmt`) allocated data into its backing file `base`."""

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        """Copy into `image` the data it reads above `new_backing`, then back it by `new_backing`."""

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None: ...

    def delete(self, path: str) -> None: ...

    def remove_unfinished(self, path: str) -> bool:
        """Remove `path` if it is what a create cut short leaves: a small file that holds no
        data (empty, a header only part written, or an image that maps nothing). True if it
        was removed; a file that may hold anyone's data is never removed."""

    def repair(self, path: str, *, fmt: str) -> None:
        """After a merge that wrote `path` was cut short (a killed qemu-img never wrote back its
        cached metadata): make the image's own metadata whole again, keeping what it maps."""

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        """Whether `image` reads, through the backing its header names now, exactly what it would
        read over `backing`. A pull cut short can leave the header naming the new backing before
        the data it needs is all in (QEMU writes the header before its cached metadata)."""

    def sharing(self, path: str) -> Sharing:
        """Hard links and another process's write lock on `path`, looked at without taking a
        lock that would disturb a running writer; StorageError if it can't be looked at."""

    def scan(self, directories: Iterable[str]) -> Dependants:
        """Every image file in `directories` (recursively, symlinked directories followed) with
        the backing file its header names, read in-process: a way to find the files the ledger
        does not know that rest on its images."""
