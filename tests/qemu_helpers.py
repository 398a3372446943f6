"""Test helpers on real images: write cluster patterns and verify them with qemu-io.

qemu-io is the test's own eye on the disk: it writes what a guest would write and reads what a
guest would read through the whole backing chain. A pattern mismatch is found from its output
("Pattern verification failed"), not only from its exit status.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

CLUSTER = 64 * 1024
TIMEOUT = 60

_FAILED_AT = re.compile(r"Pattern verification failed at offset (\d+)")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def qemu_io(path: str | Path, commands: Iterable[str], *, read_only: bool = False,
            fmt: str = "qcow2") -> str:
    argv = ["qemu-io", "-f", fmt]
    if read_only:
        argv += ["-r", "-U"]
    for command in commands:
        argv += ["-c", command]
    argv.append(str(path))
    done = _run(argv)
    out = done.stdout + done.stderr
    if done.returncode != 0 and "Pattern verification failed" not in out:
        raise AssertionError(f"qemu-io {argv[1:]} failed ({done.returncode}): {out}")
    return out


def write_clusters(path: str | Path, clusters: Mapping[int, int], fmt: str = "qcow2") -> None:
    """Write each cluster full of its pattern byte, as `qemu-io write -P` does."""
    if not clusters:
        return
    out = qemu_io(
        path, [f"write -P {p:#x} {c * CLUSTER} {CLUSTER}" for c, p in sorted(clusters.items())],
        fmt=fmt,
    )
    if out.count("wrote ") != len(clusters):
        raise AssertionError(f"qemu-io did not write every cluster of {path}: {out}")


def mismatched_clusters(path: str | Path, expected: Mapping[int, int], count: int) -> list[int]:
    """Clusters 0..count-1 that don't read their expected pattern (0 where none is given)."""
    commands = [f"read -P {expected.get(c, 0):#x} {c * CLUSTER} {CLUSTER}" for c in range(count)]
    out = qemu_io(path, commands, read_only=True)
    if out.count("read ") < count and not _FAILED_AT.search(out):
        raise AssertionError(f"qemu-io did not read every cluster of {path}: {out}")
    return sorted({int(m.group(1)) // CLUSTER for m in _FAILED_AT.finditer(out)})


def assert_reads(path: str | Path, expected: Mapping[int, int], count: int) -> None:
    bad = mismatched_clusters(path, expected, count)
    assert not bad, f"{path}: clusters {bad} don't read {[expected.get(c, 0) for c in bad]}"


def make_image(path: str | Path, virtual_size: int, clusters: Mapping[int, int] | None = None,
               backing: str | Path | None = None, backing_format: str = "qcow2",
               fmt: str = "qcow2") -> str:
    """A new image made the way a user would make it, outside the adapter under test."""
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-F", backing_format, "-b", str(backing)]
    argv += [str(path), str(virtual_size)]
    done = _run(argv)
    if done.returncode != 0:
        raise AssertionError(f"qemu-img create failed: {done.stderr}")
    write_clusters(path, clusters or {}, fmt=fmt)
    return str(path)


def raw_bytes(path: str | Path, fmt: str = "qcow2") -> bytes:
    """Every byte `path` reads through its chain (converted to raw in a scratch file)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch, "out.raw")
        done = _run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out)])
        if done.returncode != 0:
            raise AssertionError(f"qemu-img convert failed: {done.stderr}")
        return out.read_bytes()


def set_backing_unchecked(path: str | Path, backing: str, backing_format: str | None) -> None:
    """Point `path` at any backing string without opening it (to build hostile images)."""
    argv = ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing]
    if backing_format is not None:
        argv += ["-F", backing_format]
    done = _run([*argv, str(path)])
    if done.returncode != 0:
        raise AssertionError(f"qemu-img rebase -u failed: {done.stderr}")


def forget_backing_format(path: str | Path) -> None:
    """Make `path` an old-style overlay whose header does not record its backing format.

    qemu-img 7.2 refuses to write one, so the backing-format header extension (magic
    0xE2792ACA) gets an unknown magic, which qcow2 ignores.
    """
    data = bytearray(Path(path).read_bytes())
    at = data.find(bytes.fromhex("e2792aca"), 72, CLUSTER)
    if at < 0:
        raise AssertionError(f"{path} records no backing format")
    data[at : at + 4] = bytes.fromhex("0bad0bad")
    Path(path).write_bytes(bytes(data))


# QEMU's image locks are OFD locks on single bytes: byte 100 + n is held for permission bit n
# (bit 1 is "write"). Reading /proc/locks sees them without taking any lock; probing with
# `qemu-img info` instead could itself hold the file at the moment qemu-io opens it, and so make
# qemu-io fail (seen in CI).
_WRITE_LOCK_BYTE = 101


def holds_write_lock(path: str | Path) -> bool:
    """Whether some process holds QEMU's write lock on `path`."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or "OFDLCK" not in fields or key not in fields:
            continue  # a waiter, another kind of lock, or another file
        at = fields.index(key)
        start, end = fields[at + 1], fields[at + 2]
        if int(start) <= _WRITE_LOCK_BYTE and (end == "EOF" or _WRITE_LOCK_BYTE <= int(end)):
            return True
    return False


@contextmanager
def held_image(path: str | Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process opens `path` for writing and keeps it open (as a running VM, or a
    qemu-img left running by a killed snapledger, does) until the block ends or it is killed."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 600000", str(path)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errors)
        try:
            deadline = time.monotonic() + 120  # generous: a loaded machine starts qemu-io slowly
            while not holds_write_lock(path):
                if proc.poll() is not None:
                    errors.seek(0)
                    raise AssertionError(f"qemu-io could not hold {path} (exit "
                                         f"{proc.returncode}): {errors.read().decode()!r}")
                assert time.monotonic() < deadline, f"qemu-io never held {path}"
                time.sleep(0.02)
            yield proc
        finally:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


def processes_in_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def merges_in_group(pgid: int) -> list[int]:
    """The qemu-img commit or (safe, data-moving) rebase processes of process group `pgid`."""
    found = []
    for pid in processes_in_group(pgid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 2 or not argv[0].endswith(b"qemu-img"):
            continue
        if argv[1] == b"commit" or (argv[1] == b"rebase" and b"-u" not in argv):
            found.append(pid)
    return found
