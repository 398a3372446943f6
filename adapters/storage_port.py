"""The storage port: what every storage adapter (simulated, qemu-img) implements."""

from __future__ import annotations

from typing import Protocol

from snapledger.domain.images import ImageFacts


class StoragePort(Protocol):
    def exists(self, path: str) -> bool: ...

    def inspect(self, path: str) -> ImageFacts:
        """Facts about one file; StorageError if it is missing or unreadable."""

    def inspect_chain(self, path: str) -> list[ImageFacts]:
        """`path` first, then every backing file down to the bottom image."""

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
