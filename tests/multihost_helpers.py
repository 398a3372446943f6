"""Several hypervisor hosts on one machine, for the multi-host tests (issue 12, item 5).

Each host is a set of processes in a UTS and mount namespace of their own: `unshare --mount --uts`
gives every command run "on" a host its own hostname (set inside with `hostname NAME`, so that
snapledger finds the host it acts as the way it would on a real machine: no `--host`, no
SNAPLEDGER_HOST) and its own directory bind-mounted over one local path that every host uses,
`<world>/local`, the way /var/lib/libvirt/images is local to each hypervisor. A plain directory,
`<world>/shared`, is seen by every host at the same path: it stands in for NFS. All hosts share
one ledger (a PostgreSQL database on the run's private server).

The namespaces live as long as the command: nothing is mounted outside them, and killing a
command's process group (`Host.kill`) takes its namespace with it. On the machine itself
`<world>/local` stays an empty directory: a host's local files are reached from outside (for
checksums) through its backing directory, `<world>/<host>-disk`.

Needs root (unshare, mount, hostname), as CI has.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "snapledger.adapters.cli"]
CLUSTER = 64 * 1024
TIMEOUT = 120

# What runs first in a host's namespace: its hostname, its local directory, then the command.
_ENTER = 'hostname "$1" && mount --bind "$2" "$3" && shift 3 && exec "$@"'
_FAILED_AT = re.compile(r"Pattern verification failed at offset (\d+)")

# The environment a host's commands don't get: the host must come from the real hostname.
_NOT_PASSED = ("SNAPLEDGER_HOST", "SNAPLEDGER_STORE", "SNAPLEDGER_DEBUG")

# A qemu-img that runs `commit` with a rate limit (`qemu-img commit -r`) and everything else as
# the real one: a commit of a few MiB then lasts seconds, long enough to be killed in the middle.
# (QEMU 7.2's qemu-img copies at full speed and then waits out the rate before it completes the
# job, so the kill finds the data copied and the commit not completed.)
_SLOW_COMMIT = """#!/bin/sh
if [ "$1" = commit ]; then
  shift
  exec {real} commit -r "$SNAPLEDGER_TEST_COMMIT_RATE" "$@"
fi
exec {real} "$@"
"""


def can_make_hosts() -> str | None:
    """Why hosts can't be made here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (unshare --mount --uts, mount --bind, hostname)"
    for tool in ("unshare", "hostname", "mount", "qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def file_states(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under `directory`: its checksum and mtime, what must not change."""
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


class World:
    """The run's directories: `local` (each host's own files appear there), `shared` (one
    directory every host sees), `bin` (the slow qemu-img), and one backing directory per host."""

    def __init__(self, store: str, parent: Path = Path("/var/tmp")) -> None:
        self.root = parent / f"snapledger-mh-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.local = self.root / "local"
        self.shared = self.root / "shared"
        self.bin = self.root / "bin"
        for directory in (self.local, self.shared, self.bin):
            directory.mkdir(parents=True)
        real = shutil.which("qemu-img")
        assert real is not None, "qemu-img is needed"
        slow = self.bin / "qemu-img"
        slow.write_text(_SLOW_COMMIT.format(real=real))
        slow.chmod(0o755)
        self.store = store
        self.hosts: list[Host] = []

    def host(self, name: str) -> Host:
        made = Host(self, name)
        self.hosts.append(made)
        return made

    def shared_files(self) -> dict[str, tuple[str, int]]:
        """The shared directory's files: checksum and mtime."""
        return file_states(self.shared)

    def close(self) -> None:
        for host in self.hosts:
            host.kill_all()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def world(store: str) -> Iterator[World]:
    made = World(store)
    try:
        yield made
    finally:
        made.close()


class Host:
    """One host: commands run in a namespace of their own with `name` as hostname and `disk` (its
    backing directory) mounted over `world.local`."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.disk = world.root / f"{name}-disk"
        self.disk.mkdir()
        self.env = {k: v for k, v in os.environ.items() if k not in _NOT_PASSED}
        self.env["SNAPLEDGER_STORE"] = world.store
        self._background: list[subprocess.Popen[str]] = []

    # ---- paths as the host sees them ---------------------------------------------------

    def local(self, name: str) -> str:
        """A path in the local directory (the same path on every host, each its own file)."""
        return str(self.world.local / name)

    def shared(self, name: str) -> str:
        return str(self.world.shared / name)

    def outside(self, path: str) -> Path:
        """Where the machine itself (the test) finds a file the host sees at `path`."""
        at = Path(path)
        if at.is_relative_to(self.world.local):
            return self.disk / at.relative_to(self.world.local)
        return at

    def files(self) -> dict[str, tuple[str, int]]:
        """This host's local files: checksum and mtime."""
        return file_states(self.disk)

    # ---- running commands in the host's namespace --------------------------------------

    def argv(self, *command: str) -> list[str]:
        return ["unshare", "--mount", "--uts", "--propagation", "private",
                "sh", "-c", _ENTER, "sh", self.name, str(self.disk), str(self.world.local), *command]

    def exec(self, *command: str, env: Mapping[str, str] | None = None,
             timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Any program, on this host."""
        return subprocess.run(self.argv(*command), capture_output=True, text=True,
                              env=dict(env or self.env), timeout=timeout, check=False)

    def snapledger(self, *args: str) -> subprocess.CompletedProcess[str]:
        """snapledger on this host, whatever its exit code."""
        assert not any(a == "--host" or a.startswith("--host=") for a in args), \
            "a host's name comes from its hostname here"
        return self.exec(*CLI, *args)

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        """snapledger on this host, exiting `expect`; an error is one line on stderr."""
        done = self.snapledger(*args)
        assert done.returncode == expect, (self.name, args, done.returncode, done.stdout, done.stderr)
        if expect != 0:
            assert_one_line_error(done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def popen(self, *args: str, slow_commit: str | None = None) -> subprocess.Popen[str]:
        """snapledger on this host in the background, the leader of a process group of its own
        (which `kill` ends). `slow_commit` (a rate, e.g. "4M"): qemu-img commits at that many
        bytes per second."""
        env = dict(self.env)
        if slow_commit is not None:
            env["PATH"] = f"{self.world.bin}{os.pathsep}{env.get('PATH', os.defpath)}"
            env["SNAPLEDGER_TEST_COMMIT_RATE"] = slow_commit
        # unshare and sh exec the command: its pid is the group's id
        proc = subprocess.Popen(self.argv(*CLI, *args), env=env, text=True,
                                start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._background.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[str]) -> None:
        """kill -9 of the command and everything it started (its qemu-img too)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=TIMEOUT)

    def kill_all(self) -> None:
        for proc in self._background:
            if proc.poll() is None:
                self.kill(proc)

    # ---- images, written and read on this host with qemu-img and qemu-io --------------

    def qemu_io(self, path: str, commands: Iterable[str], *, read_only: bool = False) -> str:
        argv = ["qemu-io", "-f", "qcow2"]
        if read_only:
            argv += ["-r", "-U"]
        for command in commands:
            argv += ["-c", command]
        done = self.exec(*argv, path)
        out = done.stdout + done.stderr
        if done.returncode != 0 and "Pattern verification failed" not in out:
            raise AssertionError(f"{self.name}: qemu-io {argv[1:]} {path} failed ({done.returncode}): {out}")
        return out

    def make_image(self, path: str, virtual_size: int, clusters: Mapping[int, int] | None = None,
                   backing: str | None = None) -> str:
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if backing is not None:
            argv += ["-F", "qcow2", "-b", backing]
        done = self.exec(*argv, path, str(virtual_size))
        assert done.returncode == 0, f"{self.name}: qemu-img create failed: {done.stderr}"
        self.write_clusters(path, clusters or {})
        return path

    def write_clusters(self, path: str, clusters: Mapping[int, int], unit: int = CLUSTER) -> None:
        """Each cluster (64 KiB, or `unit` bytes) full of its pattern byte."""
        if not clusters:
            return
        out = self.qemu_io(path, [f"write -P {p:#x} {c * unit} {unit}" for c, p in sorted(clusters.items())])
        assert out.count("wrote ") == len(clusters), f"{self.name}: not every cluster of {path} written: {out}"

    def mismatched_clusters(self, path: str, expected: Mapping[int, int], count: int,
                            unit: int = CLUSTER) -> list[int]:
        """Clusters (64 KiB, or `unit` bytes) 0..count-1 of what `path` reads through its chain
        that don't read their expected pattern (0 where none is given)."""
        commands = [f"read -P {expected.get(c, 0):#x} {c * unit} {unit}" for c in range(count)]
        out = self.qemu_io(path, commands, read_only=True)
        if out.count("read ") < count and not _FAILED_AT.search(out):
            raise AssertionError(f"{self.name}: qemu-io did not read every cluster of {path}: {out}")
        return sorted({int(m.group(1)) // unit for m in _FAILED_AT.finditer(out)})

    def assert_reads(self, path: str, expected: Mapping[int, int], count: int, unit: int = CLUSTER) -> None:
        bad = self.mismatched_clusters(path, expected, count, unit)
        assert not bad, f"{self.name}: {path}: clusters {bad} don't read {[expected.get(c, 0) for c in bad]}"

    def chain(self, path: str) -> list[str]:
        """`path` and the files below it, as qemu-img sees them on this host."""
        done = self.exec("qemu-img", "info", "-U", "--backing-chain", "--output=json", path)
        assert done.returncode == 0, f"{self.name}: {done.stderr}"
        return [os.path.normpath(info["filename"]) for info in json.loads(done.stdout)]


def assert_one_line_error(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapledger: error: "), stderr
