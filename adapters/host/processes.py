"""Which process carries out an operation, and whether it still runs.

An operation records its runner when it starts (and `recover` when it takes one over): the host,
the kernel's boot id, the process id and the process's start time (clock ticks since boot, from
/proc), so a pid reused after the runner died is not mistaken for it. Within one process, the
operations being carried out right now are also kept here: an operation whose runner is this very
process runs only while it is in that set (a crash simulated in a test ends it, and a fresh
service in the same process may then recover it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

Runner = dict[str, object]  # host, boot, pid, started: recorded with the operation

_carrying_out: set[str] = set()  # operation ids this process is carrying out now


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (the command name, field 2, may hold spaces and parens)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rpartition(")")[2].split()[19])
    except (IndexError, ValueError):
        return None


class LocalProcesses:
    """The processes of this host, through /proc."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()

    def this_process(self) -> Runner:
        pid = os.getpid()
        return {"host": self.host, "boot": _boot_id(), "pid": pid, "started": _start_ticks(pid)}

    def running(self, runner: Mapping[str, object] | None, op_id: str) -> bool | None:
        """Whether operation `op_id`, whose runner is `runner`, is still being carried out:
        True or False on this host; None when it ran on another host, which can't be seen from
        here. An operation recorded without a runner (before runners were recorded) is not."""
        if not runner:
            return False
        if runner.get("host") != self.host:
            return None
        if runner.get("boot") != _boot_id():
            return False  # the host rebooted since: nothing of then still runs
        pid = runner.get("pid")
        if not isinstance(pid, int) or _start_ticks(pid) != runner.get("started"):
            return False
        if pid == os.getpid():
            return op_id in _carrying_out
        return True

    def carrying_out(self, op_id: str) -> AbstractContextManager[None]:
        return carrying_out(op_id)

    def files_open_here(self) -> set[tuple[int, int]]:
        return files_open_here()


@contextmanager
def carrying_out(op_id: str) -> Iterator[None]:
    """While the block runs, this process is carrying out `op_id`."""
    _carrying_out.add(op_id)
    try:
        yield
    finally:
        _carrying_out.discard(op_id)


def files_open_here() -> set[tuple[int, int]]:
    """(device, inode) of every file this process has a descriptor of: the ledger's SQLite
    files among them. Such a file is never opened (and closed) again for a look: closing any
    descriptor of a file drops every POSIX lock this process holds on it, SQLite's included."""
    identities: set[tuple[int, int]] = set()
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return identities
    for fd in descriptors:
        try:
            seen = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, for one)
        identities.add((seen.st_dev, seen.st_ino))
    return identities
