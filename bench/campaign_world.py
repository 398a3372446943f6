"""The world around snapledger in the fault campaign: scratch directories, small tmpfs mounts,
processes holding images open, a PATH without qemu-img, and the `snapledger` command itself,
run as a subprocess in its own session so that kill -9 can take it and its qemu-img together.

Everything a history starts (mounts, holders, process groups) is registered with its Scratch,
and in a file under the campaign's registry directory, so that it is undone even when the
history is interrupted (Ctrl-C) and, failing that, by the campaign's final sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from snapledger.adapters.storage import qemu_locks

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.qemu_helpers import merges_in_group, processes_in_group  # noqa: E402  (the tests' /proc scans)

FILLER = ".campaign-filler"  # QEMU holds byte 100 + n of an image for permission bit n; 1 is write


class WorldError(Exception):
    """The campaign could not arrange the world as it wanted (not a product finding)."""


def snapledger_command() -> list[str]:
    """The installed `snapledger` script next to this Python, else the module."""
    script = Path(sys.executable).with_name("snapledger")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "snapledger.adapters.cli"]


# ---- processes ---------------------------------------------------------------------------


def kill_group(pgid: int, wait: float = 30.0) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait
    while processes_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def holds_write_lock(path: str) -> bool:
    """Whether some process holds QEMU's write lock on `path` (only to wait for a holder to be
    ready: snapledger's own look, which takes no lock)."""
    return qemu_locks.sharing(path).writer is not None


@dataclass
class Run:
    """One finished (or killed) snapledger process."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    killed: bool
    seconds: float
    merge_seen: bool = False
    timed_out: bool = False


@dataclass(frozen=True)
class KillPlan:
    """When to send SIGKILL to the command's process group: `after` seconds from its start,
    or, with `during_merge`, `after` seconds after a merge is first seen running."""

    after: float
    during_merge: bool = False


# ---- one history's scratch space ---------------------------------------------------------


class Scratch:
    """A history's directory, with the mounts, holders and process groups it made."""

    def __init__(self, root: Path, registry: Path) -> None:
        self.root = root
        self.registry = registry
        root.mkdir(parents=True)
        registry.mkdir(parents=True, exist_ok=True)
        self.mounts: list[Path] = []
        self.holders: dict[str, subprocess.Popen[bytes]] = {}
        self.groups: set[int] = set()

    # mounts ---------------------------------------------------------------------------

    def mount_tmpfs(self, directory: Path, size_mib: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                               str(directory)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise WorldError(f"mount tmpfs {directory}: {done.stderr.strip()}")
        self.mounts.append(directory)
        self._register(_mount_entry(directory), {"mount": str(directory)})

    @staticmethod
    def fill(directory: Path, leave: int) -> None:
        """A filler file that leaves about `leave` bytes free on `directory`'s filesystem."""
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        size = free - leave
        if size <= 0:
            return
        filler = directory / FILLER
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                pass  # as much as would fit: fuller still
        finally:
            os.close(fd)

    @staticmethod
    def unfill(directory: Path) -> None:
        (directory / FILLER).unlink(missing_ok=True)

    # holders ----------------------------------------------------------------------------

    def hold(self, path: str, fmt: str) -> None:
        """Another process opens `path` for writing and keeps it open until released."""
        proc = subprocess.Popen(["qemu-io", "-f", fmt, "-c", "sleep 600000", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        self.holders[path] = proc
        self._register(f"holder-{proc.pid}", {"pid": proc.pid, "image": path})
        deadline = time.monotonic() + 60
        while not holds_write_lock(path):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                self.release(path)
                raise WorldError(f"qemu-io could not hold {path}: {err.strip()}")
            if time.monotonic() > deadline:
                self.release(path)
                raise WorldError(f"qemu-io never held {path}")
            time.sleep(0.01)

    def release(self, path: str) -> None:
        proc = self.holders.pop(path, None)
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
        self._unregister(f"holder-{proc.pid}")

    def release_all(self) -> None:
        for path in list(self.holders):
            self.release(path)

    # the snapledger command ---------------------------------------------------------------

    def run(self, argv: list[str], env: dict[str, str], kill: KillPlan | None = None,
            timeout: float = 600) -> Run:
        started = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            self.groups.add(proc.pid)
            self._register(f"group-{proc.pid}", {"pgid": proc.pid})
            killed, merge_seen, timed_out = self._watch(proc, kill, started, timeout)
            kill_group(proc.pid)  # whatever it left running (a killed one's qemu-img included)
            self.groups.discard(proc.pid)
            self._unregister(f"group-{proc.pid}")
            out.seek(0)
            err.seek(0)
            return Run(argv, proc.returncode, out.read().decode(errors="replace"),
                       err.read().decode(errors="replace"), killed,
                       time.monotonic() - started, merge_seen, timed_out)

    @staticmethod
    def _watch(proc: subprocess.Popen[bytes], kill: KillPlan | None, started: float,
               timeout: float) -> tuple[bool, bool, bool]:
        """Wait for `proc`, killing its group as `kill` says: (killed, merge seen, timed out)."""
        kill_at = None if kill is None or kill.during_merge else started + kill.after
        merge_seen = False
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                kill_group(proc.pid)
                proc.wait()
                return True, merge_seen, True
            if kill is not None and kill.during_merge and not merge_seen and merges_in_group(proc.pid):
                merge_seen = True
                kill_at = now + kill.after
            if kill_at is not None and now >= kill_at:
                kill_group(proc.pid)
                proc.wait()
                return proc.returncode == -signal.SIGKILL, merge_seen, False
            time.sleep(0.002 if kill is not None else 0.01)
        return False, merge_seen, False

    # bookkeeping ------------------------------------------------------------------------

    def _register(self, name: str, what: dict[str, object]) -> None:
        (self.registry / name).write_text(json.dumps(what))

    def _unregister(self, name: str) -> None:
        try:
            (self.registry / name).unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Undo everything: holders, process groups, mounts, files."""
        self.release_all()
        for pgid in list(self.groups):
            kill_group(pgid)
            self._unregister(f"group-{pgid}")
        self.groups.clear()
        for mount in reversed(self.mounts):
            unmount(mount)
            self._unregister(_mount_entry(mount))
        self.mounts.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _mount_entry(directory: Path) -> str:
    return "mount-" + str(directory).strip("/").replace("/", "_")


def unmount(directory: Path) -> None:
    done = subprocess.run(["umount", str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def sweep(scratch_root: Path, registry: Path) -> None:
    """The campaign's last resort: whatever a history left registered, undone."""
    if registry.exists():
        for entry in registry.iterdir():
            try:
                what = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue
            if "pid" in what:
                _kill_holder(int(what["pid"]), str(what["image"]))
            if "pgid" in what:
                kill_group(int(what["pgid"]), wait=5)
            entry.unlink(missing_ok=True)
    root = str(scratch_root.resolve())
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        mountpoint = line.split()[1]
        if mountpoint == root or mountpoint.startswith(root + "/"):
            unmount(Path(mountpoint))
    shutil.rmtree(scratch_root, ignore_errors=True)


def _kill_holder(pid: int, image: str) -> None:
    """Kill `pid` only if it still is the qemu-io we started on `image`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if argv and argv[0].endswith(b"qemu-io") and image.encode() in argv:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- a PATH without qemu-img -------------------------------------------------------------


def path_without(program: str, into: Path) -> str:
    """A directory of links to every program on PATH but `program`, to use as PATH."""
    into.mkdir(parents=True, exist_ok=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = os.path.join(directory, name)
            link = into / name
            if name == program or link.exists() or link.is_symlink():
                continue
            if os.path.isfile(target) and os.access(target, os.X_OK):
                link.symlink_to(target)
    if shutil.which(program, path=str(into)) is not None:
        raise WorldError(f"{program} still on the reduced PATH")
    return str(into)
