"""Naming rules of semantics.md: valid names and the libvirt/RFC overlay names."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Container, Iterable
from datetime import UTC, datetime

from .errors import BadName, BadPath, OutsideAllowedDirs

_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,63}")
_DISK = re.compile(r"[a-z][a-z0-9]{0,15}")
# A host name as `hostname` gives it: DNS labels (letters, digits, '-', '_' seen in the wild)
# joined by dots, at most 253 characters.
_HOST = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*")
RESERVED_HOST = "unknown"  # what a record made without any host says (ledger_hash.UNKNOWN_HOST)


def check_name(kind: str, name: str) -> str:
    """Snapshot and VM names: 1-64 of [A-Za-z0-9._+-], not starting with '-' or '.'."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadName(
            f"bad {kind} name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ + -, "
            "not starting with '-' or '.'"
        )
    return name


def check_host(host: str) -> str:
    """A host's name (--host, SNAPLEDGER_HOST, the machine's hostname): a DNS-like name of at
    most 253 characters; not `unknown`, which names no host."""
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        raise BadName(
            f"bad host name {host!r}: use letters, digits, '-' and '_' in dot-separated labels "
            "(at most 253 characters), as hostname gives it; set --host or SNAPLEDGER_HOST"
        )
    if host.lower() == RESERVED_HOST:  # host names are DNS names: case does not count
        raise BadName(f"host name {host!r} is reserved (it marks records made without a host)")
    return host


def check_disk_target(target: str) -> str:
    if not isinstance(target, str) or not _DISK.fullmatch(target):
        raise BadName(f"bad disk target {target!r}: expected a name like vda")
    return target


def stem(path: str) -> str:
    """The file name without its last '.suffix' (libvirt's rule), in its directory."""
    directory, file_name = posixpath.split(path)
    base, dot, _suffix = file_name.rpartition(".")
    return posixpath.join(directory, base if dot and base else file_name)


def time_snapshot_name(at: str, is_taken: Callable[[str], bool]) -> str:
    """`snapshot VM` without a name (semantics.md): the UTC time of `at` (ISO 8601) as
    `YYYYmmdd-HHMMSS`, then `-2`, `-3`, ... while that name is taken."""
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    base = moment.strftime("%Y%m%d-%H%M%S")
    name, n = base, 1
    while is_taken(name):
        n += 1
        name = f"{base}-{n}"
    return name


def snapshot_overlay_path(active: str, snapshot: str) -> str:
    """`base.qcow2` -> `base.s1`; active `base.s1` -> `base.s2`."""
    return f"{stem(active)}.{snapshot}"


def revert_overlay_path(
    frozen: str, snapshot: str, is_taken: Callable[[str], bool]
) -> str:
    """`base.<snapshot>-<n>` with the smallest n whose path is not taken (RFC naming)."""
    n = 1
    while is_taken(f"{stem(frozen)}.{snapshot}-{n}"):
        n += 1
    return f"{stem(frozen)}.{snapshot}-{n}"


def check_user_path(path: str, allowed_dirs: Container[str] | None = None) -> str:
    """A user-given path: absolute and normalised, inside an allowed directory when one is set."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise BadPath(f"path {path!r} is not absolute")
    if "\x00" in path:
        raise BadPath("path contains a NUL byte")
    if ":" in path:  # qemu-img would read it as a protocol (`nbd:`, `json:`...), not a file
        raise BadPath(f"path {path!r} contains ':', which qemu-img takes for a protocol")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise BadPath(f"path {path!r} contains a control character")
    normal = posixpath.normpath(path)
    if normal != (path.rstrip("/") or "/") or normal.startswith("//"):
        raise BadPath(f"path {path!r} is not normalised (use {normal})")
    if allowed_dirs is not None and posixpath.dirname(normal) not in allowed_dirs:
        raise BadPath(f"path {path!r} is outside the allowed directories of this VM")
    return normal


def confinement(
    resolve: Callable[[str], str], within: Iterable[str] | None
) -> Callable[[str, str | None], None]:
    """A check that raises OutsideAllowedDirs when a file of a chain (`below`: the image whose
    backing it is) resolves outside `within`; with `within` None, every file passes. Storage
    adapters call it before opening each file of a chain."""
    confined = None if within is None else [resolve(d) for d in within]

    def confine(name: str, below: str | None) -> None:
        if confined is not None and not is_within(resolve(name), confined):
            raise OutsideAllowedDirs(name, resolve(name), below)

    return confine


def is_within(path: str, directories: Iterable[str]) -> bool:
    """`path` is one of `directories` or lies below one (both given resolved and normalised,
    so a prefix ending at a `/` is a common path; "/a/bc" is not within "/a/b")."""
    for directory in directories:
        if path == directory or path.startswith(directory if directory.endswith("/") else directory + "/"):
            return True
    return False
