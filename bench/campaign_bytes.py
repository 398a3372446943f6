"""The fault campaign's own eye on the bytes: what a disk should read, and qemu-io to look.

A disk's content is modelled cluster by cluster (64 KiB): each cluster is either a pattern byte
(the whole cluster full of it, as `qemu-io write -P` writes it) or exactly 64 KiB of other bytes
(a qcow2 header a guest wrote into a raw disk). Clusters not in the model read zero.

Nothing here asks snapledger anything: writes are made with qemu-io as a guest would make them,
and reads go through the image's whole backing chain as a guest would see it.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER = 64 * 1024
MIB = 1 << 20
MAX_READ = 16 * MIB  # one qemu-io read request at most (its buffer is allocated whole)
TIMEOUT = 300

Cell = int | bytes
Content = dict[int, Cell]

_FAILED_AT = re.compile(r"Pattern verification failed at offset (\d+), (\d+) bytes")
_READ_DONE = re.compile(r"^read (\d+)/(\d+) bytes at offset (\d+)$", re.M)
_HEX_LINE = re.compile(r"^([0-9a-f]{8}):  ((?:[0-9a-f]{2} ){1,16})", re.M)


class QemuIoFailed(Exception):
    """qemu-io could not open or use an image (a broken chain, a lock, a missing file)."""


def _qemu_io(path: str, fmt: str, commands: list[str], *, read_only: bool) -> str:
    argv = ["qemu-io", "-f", fmt]
    if read_only:
        argv += ["-r", "-U"]
    for command in commands:
        argv += ["-c", command]
    argv.append(path)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    if done.returncode != 0 and "Pattern verification failed" not in out:
        raise QemuIoFailed(f"qemu-io -f {fmt} {path}: exit {done.returncode}: {out.strip()[-400:]}")
    return out


# ---- writing as a guest ------------------------------------------------------------------


def write_clusters(path: str, fmt: str, clusters: Mapping[int, int]) -> None:
    """Each cluster full of its pattern byte."""
    commands = [f"write -P {p:#x} {c * CLUSTER} {CLUSTER}" for c, p in sorted(clusters.items())]
    _expect_writes(path, fmt, commands)


def write_region(path: str, fmt: str, first: int, count: int, pattern: int) -> None:
    """`count` clusters from cluster `first` full of `pattern`, in requests of MAX_READ."""
    commands = []
    offset, end = first * CLUSTER, (first + count) * CLUSTER
    while offset < end:
        length = min(MAX_READ, end - offset)
        commands.append(f"write -P {pattern:#x} {offset} {length}")
        offset += length
    _expect_writes(path, fmt, commands)


def write_bytes(path: str, fmt: str, first: int, data: bytes) -> None:
    """`data` (a whole number of clusters) written at cluster `first`."""
    assert len(data) % CLUSTER == 0
    with tempfile.NamedTemporaryFile(prefix="campaign-blob-") as source:
        source.write(data)
        source.flush()
        _expect_writes(path, fmt, [f"write -s {source.name} {first * CLUSTER} {len(data)}"])


def _expect_writes(path: str, fmt: str, commands: list[str]) -> None:
    if not commands:
        return
    out = _qemu_io(path, fmt, commands, read_only=False)
    if out.count("wrote ") != len(commands):
        raise QemuIoFailed(f"qemu-io did not make every write to {path}: {out.strip()[-400:]}")


def blob_cells(data: bytes) -> dict[int, Cell]:
    """`data`, padded with zeros to whole clusters, as cells from cluster 0."""
    padded = data + bytes(-len(data) % CLUSTER)
    return {i: padded[i * CLUSTER:(i + 1) * CLUSTER] for i in range(len(padded) // CLUSTER)}


# ---- reading as a guest ------------------------------------------------------------------


@dataclass(frozen=True)
class ReadRun:
    """Clusters first..first+count-1 all expected to read `cell`."""

    first: int
    count: int
    cell: Cell

    def describe(self) -> str:
        what = f"{self.cell:#04x}" if isinstance(self.cell, int) else "a 64 KiB blob"
        return f"clusters {self.first}..{self.first + self.count - 1} should read {what}"


def read_runs(content: Mapping[int, Cell], clusters: int) -> list[ReadRun]:
    """The reads that check every cluster: equal neighbours grouped, blobs one by one."""
    runs: list[ReadRun] = []
    limit = MAX_READ // CLUSTER
    for c in range(clusters):
        cell = content.get(c, 0)
        last = runs[-1] if runs else None
        if (last is not None and isinstance(cell, int) and last.cell == cell
                and last.first + last.count == c and last.count < limit):
            runs[-1] = ReadRun(last.first, last.count + 1, cell)
        else:
            runs.append(ReadRun(c, 1, cell))
    return runs


def _read_command(run: ReadRun) -> str:
    offset, length = run.first * CLUSTER, run.count * CLUSTER
    if isinstance(run.cell, int):
        return f"read -P {run.cell:#x} {offset} {length}"
    return f"read -v {offset} {length}"


def _hexdump_bytes(out: str, offset: int, length: int) -> bytes:
    data = bytearray()
    for match in _HEX_LINE.finditer(out):
        at = int(match.group(1), 16)
        if offset <= at < offset + length:
            data += bytes.fromhex(match.group(2).replace(" ", ""))
    return bytes(data)


def mismatches(path: str, fmt: str, content: Mapping[int, Cell], clusters: int) -> list[str]:
    """What in `path` (read through its chain) does not read as `content` says; [] if all does.

    Raises QemuIoFailed when the image can't be read at all."""
    runs = read_runs(content, clusters)
    out = _qemu_io(path, fmt, [_read_command(r) for r in runs], read_only=True)
    done = {int(m.group(3)) for m in _READ_DONE.finditer(out)}
    failed = {int(m.group(1)) for m in _FAILED_AT.finditer(out)}
    problems = []
    for run in runs:
        start, end = run.first * CLUSTER, (run.first + run.count) * CLUSTER
        if start not in done:
            problems.append(f"{run.describe()}: not read ({out.strip()[-200:]})")
            continue
        bad = sorted(f for f in failed if start <= f < end)
        if bad:
            problems.append(f"{run.describe()}: first differing byte at offset {bad[0]}")
        elif isinstance(run.cell, bytes):
            seen = _hexdump_bytes(out, start, end - start)
            if seen != run.cell:
                problems.append(f"{run.describe()}: its bytes differ")
    return problems


# ---- not reading twice what cannot have changed -----------------------------------------


def qcow2_backing(path: str) -> tuple[str, str | None] | None:
    """The backing file name (resolved against the image's directory) and recorded format of
    a qcow2 image, read from its header; None if it has none."""
    with open(path, "rb") as f:
        header = f.read(CLUSTER)
    if header[:4] != b"QFI\xfb":
        raise ValueError(f"{path} is not qcow2")
    version, offset, size = struct.unpack(">IQI", header[4:20])
    if offset == 0 or size == 0:
        return None
    name = header[offset:offset + size].decode("utf-8", "replace")
    header_length = struct.unpack(">I", header[100:104])[0] if version >= 3 else 72
    backing_format = None
    at = header_length
    while at + 8 <= len(header):
        magic, length = struct.unpack(">II", header[at:at + 8])
        if magic == 0:
            break
        if magic == 0xE2792ACA:
            backing_format = header[at + 8:at + 8 + length].decode("ascii", "replace")
        at += 8 + (length + 7) // 8 * 8
    return os.path.normpath(os.path.join(os.path.dirname(path), name)), backing_format


def chain_signature(path: str, fmt: str) -> tuple[tuple[object, ...], ...] | None:
    """Identity and times of every file in `path`'s chain; None if any can't be read."""
    signature = []
    seen: set[str] = set()
    current: str | None = path
    current_fmt = fmt
    while current is not None:
        if current in seen or len(seen) > 64:
            return None
        seen.add(current)
        try:
            st = os.stat(current)
            below = qcow2_backing(current) if current_fmt == "qcow2" else None
        except (OSError, ValueError, struct.error):
            return None
        signature.append((current, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        if below is None:
            current = None
        else:
            current, backing_format = below
            current_fmt = backing_format or "probe"
    return tuple(signature)


def content_digest(content: Mapping[int, Cell]) -> str:
    digest = hashlib.sha256()
    for c in sorted(content):
        cell = content[c]
        digest.update(struct.pack(">Q", c))
        digest.update(cell if isinstance(cell, bytes) else bytes([cell]))
    return digest.hexdigest()


@dataclass
class ByteChecker:
    """Checks images against their model, remembering what was found good: a chain whose
    files all keep their identity, size, mtime and ctime can't read differently."""

    bytes_read: int = 0
    bytes_vouched: int = 0  # found good earlier, chain untouched since
    _good: set[tuple[object, ...]] = field(default_factory=set)

    def check(self, path: str, fmt: str, content: Mapping[int, Cell], clusters: int) -> list[str]:
        signature = chain_signature(path, fmt)
        key = (signature, fmt, content_digest(content), clusters)
        if signature is not None and key in self._good:
            self.bytes_vouched += clusters * CLUSTER
            return []
        try:
            problems = mismatches(path, fmt, content, clusters)
        except QemuIoFailed as error:
            return [f"unreadable: {error}"]
        self.bytes_read += clusters * CLUSTER
        if not problems and signature is not None:
            self._good.add(key)
        return problems


def file_fingerprint(path: Path, hash_limit: int = 16 * MIB) -> tuple[object, ...]:
    """What must not change in a file a refused command leaves alone: identity, size, mtime,
    and the bytes themselves (hashed up to `hash_limit`; above that mtime has to do)."""
    st = path.stat()
    digest = ""
    if st.st_size <= hash_limit:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_nlink, digest)


def fingerprints(directories: Iterable[Path], skip: Iterable[Path] = ()) -> dict[str, tuple[object, ...]]:
    skipped = {str(p) for p in skip}
    out: dict[str, tuple[object, ...]] = {}
    for directory in directories:
        for root, _dirs, files in os.walk(directory):
            for name in files:
                full = os.path.join(root, name)
                if full in skipped or any(full.startswith(s + os.sep) for s in skipped):
                    continue
                try:
                    out[full] = file_fingerprint(Path(full))
                except OSError:
                    continue
    return out


def fingerprint_changes(before: Mapping[str, tuple[object, ...]],
                        after: Mapping[str, tuple[object, ...]]) -> list[str]:
    changes = [f"new file {p}" for p in sorted(set(after) - set(before))]
    changes += [f"file gone {p}" for p in sorted(set(before) - set(after))]
    changes += [f"file changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return changes
