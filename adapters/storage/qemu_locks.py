"""Is an image file open in another QEMU process? Looked at without disturbing that process.

QEMU (and qemu-img, qemu-io, qemu-nbd) lock single bytes of every image they open with
open-file-description (OFD) locks: byte 100 + n for each permission n they use (bit 0:
consistent read, bit 1: write), byte 200 + n for each permission they refuse to share. Asking the
kernel with F_OFD_GETLK whether a write lock on such a byte *could* be taken takes no lock and
opens the file read-only, so a running writer is never disturbed; the descriptor is closed at
once. The processes' open files then name the holder for the message.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from snapledger.adapters.host.processes import files_open_here
from snapledger.adapters.service.ports import Sharing
from snapledger.domain.errors import StorageError

_READ_BYTE = 100  # QEMU's "consistent read" permission
_WRITE_BYTE = 101  # QEMU's "write" permission
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)  # Linux
_F_WRLCK, _F_UNLCK = fcntl.F_WRLCK, fcntl.F_UNLCK
# struct flock: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t), padded
_FLOCK = struct.Struct("@hhqqi4x")


def sharing(path: str) -> Sharing:
    """Hard links of `path` and whether another process holds QEMU's read or write lock on it."""
    try:
        identity = os.stat(path)
    except OSError as error:
        raise StorageError(f"can't look at {path}: {error.strerror}") from None
    if (identity.st_dev, identity.st_ino) in files_open_here():
        # opening and closing it would drop this process's own POSIX locks on it (SQLite's)
        raise StorageError(f"{path} is a file snapledger itself has open (its ledger?): refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as error:
        raise StorageError(f"can't look at {path}: {error.strerror}") from None
    try:
        seen = os.fstat(fd)
        writer = _locked(fd, _WRITE_BYTE)
        reader = writer or _locked(fd, _READ_BYTE)
    finally:
        os.close(fd)
    holder = None
    if writer or reader:
        holder = _holder(seen.st_dev, seen.st_ino)
    return Sharing(links=seen.st_nlink, writer=holder if writer else None,
                   reader=holder if reader else None)


def _locked(fd: int, byte: int) -> bool:
    """Whether another open file description holds a lock that overlaps `byte`."""
    probe = _FLOCK.pack(_F_WRLCK, os.SEEK_SET, byte, 1, 0)
    try:
        answer = fcntl.fcntl(fd, _F_OFD_GETLK, probe)
    except OSError:
        # No OFD locks on this filesystem: QEMU can't lock there either, and qemu-img's own
        # merges still fail on a locked image; nothing more can be learnt here.
        return False
    return int(_FLOCK.unpack(answer)[0]) != _F_UNLCK


def _holder(device: int, inode: int) -> str:
    """'NAME (pid N)' of a process that has the file open (OFD locks show no pid in
    /proc/locks, so its open files are looked through); else a plain word."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            for fd in (entry / "fd").iterdir():
                seen = os.stat(fd)
                if (seen.st_dev, seen.st_ino) == (device, inode):
                    name = (entry / "comm").read_text().strip()
                    return f"{name} (pid {entry.name})"
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return "another process"
