"""The storage port: what every storage adapter (simulated, qemu-img) implements."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from snapledger.domain.images import ImageFacts


class StoragePort(Protocol):
    """Failures raise StorageError; a step that could not start because another process holds
    a lock on an image (a running VM, a qemu-img still running) raises ImageInUse and has done
    nothing."""

    def exists(self, path: str) -> bool: ...

    def resolve(self, path: str) -> str:
        """`path` with every symlink resolved (realpath); the file need not exist."""

    def inspect(self, path: str) -> ImageFacts:
        """Facts about one file (its backing is named, never opened); StorageError if it is
        missing or unreadable."""

    def inspect_chain(self, path: str, within: Iterable[str] | None = None) -> list[ImageFacts]:
        """`path` first, then every backing file down to the bottom image. With `within`, each
        file, `path` included, must resolve inside one of these directories (or below one):
        the first that does not raises OutsideAllowedDirs before it is opened."""

    def create_overlay(
        self, path: str, backing: str, backing_format: str, virtual_size: int
    ) -> None:
        """Create `path` exclusively; StorageError if it exists."""

    def commit(self, top: str, base: str) -> None:
        """Write `top`'s allocated data into its backing file `base`."""

    def pull(self, image: str, new_backing: str | None, new_backing_format: str | None) -> None:
        """Copy into `image` the data it reads above `new_backing`, then back it by `new_backing`."""

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None
    ) -> None: ...

    def delete(self, path: str) -> None: ...
