"""Simulated storage of several hosts: each host its own files, and one shared directory tree
every host sees at the same paths (NFS, in the tests' world).

A `HostStorage` is a SimulatedStorage whose file table routes a path under a shared directory
to the one table all hosts hold, and any other path to the host's own: two hosts' files at the
same local path are two files, and a file on shared storage is one file, written or deleted for
every host at once. The hosts share the inode counter and the files' clock, as one machine would.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Iterator, MutableMapping

from snapledger.adapters.storage.simulated import SimImage, SimulatedStorage


class RoutedFiles(MutableMapping[str, SimImage]):
    def __init__(self, own: dict[str, SimImage], shared: dict[str, SimImage], shared_dirs: tuple[str, ...]) -> None:
        self.own, self.shared, self.shared_dirs = own, shared, shared_dirs

    def _table(self, path: str) -> dict[str, SimImage]:
        under = any(posixpath.commonpath([path, d]) == d for d in self.shared_dirs)
        return self.shared if under else self.own

    def __getitem__(self, path: str) -> SimImage:
        return self._table(path)[path]

    def __setitem__(self, path: str, image: SimImage) -> None:
        self._table(path)[path] = image

    def __delitem__(self, path: str) -> None:
        del self._table(path)[path]

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(list(self.own), list(self.shared))

    def __len__(self) -> int:
        return len(self.own) + len(self.shared)


class HostWorld:
    """The hosts' storages over one shared tree."""

    def __init__(self, shared_dirs: tuple[str, ...] = ("/shared",)) -> None:
        self.shared_dirs = shared_dirs
        self.shared: dict[str, SimImage] = {}
        self._inodes = itertools.count(1000)
        self._ticks = itertools.count(1)
        self.hosts: dict[str, HostStorage] = {}

    def host(self, name: str) -> HostStorage:
        if name not in self.hosts:
            self.hosts[name] = HostStorage(self)
        return self.hosts[name]


class HostStorage(SimulatedStorage):
    def __init__(self, world: HostWorld) -> None:
        super().__init__()
        self.files = RoutedFiles({}, world.shared, world.shared_dirs)  # type: ignore[assignment]
        self._inodes = world._inodes
        self._ticks = world._ticks
