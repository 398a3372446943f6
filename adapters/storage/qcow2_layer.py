"""What `qemu-img info` and `qemu-img map` say about one plain qcow2 layer, read in process
(issue 13: a chain of 200 layers cost 400 qemu-img processes per look).

Only the common case is answered here: version 2 or 3, no encryption, no external data file, no
internal snapshot, no bitmap, standard (not extended) L2 entries, no incompatible feature but
"dirty" and "compression type", no autoclear feature, every table aligned, inside the file and
read once, and what QEMU checks when it opens a file (the refcount table's place and size, the
compression type, the header extensions, the backing name's place) as QEMU would have it;
names in printable ASCII. Anything else gives None, and the caller asks qemu-img, whose answer
(or refusal) stays the reference; a fuzzer held it to qemu-img on about 11,700 damaged files. A test holds this module to qemu-img's answers on
images written every way qemu-io and qemu-img can (tests/integration/test_qcow2_layer.py).

The answers, as QEMU computes them:
- virtual size: the header's size, in whole 512-byte sectors (QEMU drops the rest);
- backing file: the name as the header spells it (a name with a ':' is left to qemu-img, which
  knows protocols), and its format from the backing-format extension, if any;
- allocated: bytes of guest clusters whose L2 entry holds data: compressed, or pointing at a
  host cluster without the "reads as zeros" flag (qcow2's block status; `map` with the backing
  cut off, depth 0); the last cluster counts up to the virtual size.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from snapledger.adapters.storage.qcow2_headers import read_regular_file

MAGIC = b"QFI\xfb"
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72 bytes every version has
_V3 = struct.Struct(">QQQII")  # incompatible, compatible, autoclear features, refcount order, length
_EXTENSION = struct.Struct(">II")
BACKING_FORMAT_EXTENSION = 0xE2792ACA
DATA_FILE_EXTENSION = 0x44415441
# Incompatible features this reader understands: dirty (refcounts may be stale, the L2 tables
# are not) and the compression type (a compressed cluster holds data whatever its codec).
_COMPRESSION_TYPE = 1 << 3
_UNDERSTOOD_INCOMPATIBLE = (1 << 0) | _COMPRESSION_TYPE
# Extensions QEMU checks against tables this reader does not read: such a file goes to qemu-img.
BITMAPS_EXTENSION = 0x23852875
CRYPTO_EXTENSION = 0x0537BE77
_LEFT_TO_QEMU_IMG = (DATA_FILE_EXTENSION, BITMAPS_EXTENSION, CRYPTO_EXTENSION)
_MAX_REFCOUNT_TABLE = 8 << 20  # QEMU's limit on the refcount table it reads
_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
_L1_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
_COMPRESSED = 1 << 62
_RESERVED = 0x3F00_0000_0000_01FE  # a standard entry's bits 1-8 and 56-61
_ZERO = 1
_MAX_L1_BYTES = 32 << 20  # QEMU's own limit on an L1 table it will read


@dataclass(frozen=True)
class Qcow2Layer:
    virtual_size: int
    backing_name: str | None  # as the header spells it
    backing_format: str | None
    allocated: int


def read_layer(path: str) -> Qcow2Layer | None:
    """The layer's answers, or None: not a plain qcow2 file this reader understands (the
    caller asks qemu-img). Only a regular file is read, and only its tables."""
    return read_regular_file(path, _read, (OSError, struct.error, ValueError, OverflowError))


def _read(fd: int, file_size: int) -> Qcow2Layer | None:
    head = os.pread(fd, 4096, 0)
    if len(head) < _V2.size:
        return None
    (magic, version, backing_offset, backing_size, cluster_bits, size, crypt, l1_size,
     l1_offset, refcount_offset, refcount_clusters, snapshots, snapshots_offset) = _V2.unpack_from(head)
    if magic != MAGIC or version not in (2, 3) or crypt != 0 or not 9 <= cluster_bits <= 21:
        return None
    cluster = 1 << cluster_bits
    header_length = 72
    if version == 3:
        if len(head) < _V2.size + _V3.size:
            return None
        incompatible, _compatible, autoclear, refcount_order, header_length = _V3.unpack_from(head, _V2.size)
        if incompatible & ~_UNDERSTOOD_INCOMPATIBLE or autoclear or refcount_order > 6:
            return None
        if header_length < 104 or header_length % 8 or header_length > len(head):
            return None
        # the compression type: zlib without the feature bit, zstd with it (QEMU's own rule)
        kind = head[104] if header_length > 104 else 0
        if (kind, bool(incompatible & _COMPRESSION_TYPE)) not in ((0, False), (1, True)):
            return None
    # What QEMU checks of the tables it does not need here, checked all the same: a file it
    # refuses to open is never answered for. Internal snapshots are left to qemu-img.
    if header_length > cluster or size % 512 or size <= 0 or snapshots:
        return None
    if refcount_clusters == 0 or refcount_offset % cluster or snapshots_offset % cluster:
        return None
    if refcount_clusters * cluster > _MAX_REFCOUNT_TABLE:
        return None
    extensions = _extensions(fd, head, header_length, cluster, backing_offset)
    if extensions is None or any(kind in extensions for kind in _LEFT_TO_QEMU_IMG):
        return None
    backing_name = _backing_name(fd, backing_offset, backing_size, cluster)
    if not isinstance(backing_name, str | None):
        return None
    backing_format = None
    if BACKING_FORMAT_EXTENSION in extensions:
        spelled = extensions[BACKING_FORMAT_EXTENSION]
        if not 0 < len(spelled) < 16 or not _plain(spelled):
            return None
        backing_format = spelled.decode("ascii") if backing_name is not None else None
    allocated = _allocated(fd, file_size, cluster, size, l1_size, l1_offset, zero_flag=version == 3)
    if allocated is None:
        return None
    return Qcow2Layer(size, backing_name, backing_format, allocated)


def _plain(spelled: bytes) -> bool:
    """Printable ASCII only: anything else (a NUL, UTF-8, a noncharacter) is left to qemu-img,
    which has its own ways with such names."""
    return all(0x20 <= byte < 0x7F for byte in spelled)


def _extensions(
    fd: int, head: bytes, header_length: int, cluster: int, backing_offset: int
) -> dict[int, bytes] | None:
    """The header extensions, between the header and the end of the first cluster (or the
    backing name, if it comes first)."""
    end = min(cluster, backing_offset) if backing_offset else cluster
    data = head if end <= len(head) else os.pread(fd, end, 0)
    found: dict[int, bytes] = {}
    offset = header_length
    while True:
        if offset + _EXTENSION.size > end:
            return None
        kind, length = _EXTENSION.unpack_from(data, offset)
        if kind == 0:
            return found if length == 0 else None
        offset += _EXTENSION.size
        if offset + length > end or kind in found:
            return None
        found[kind] = bytes(data[offset : offset + length])
        offset += (length + 7) & ~7


def _backing_name(fd: int, offset: int, length: int, cluster: int) -> str | None | bool:
    """The backing name as spelled; None: no backing; False: left to qemu-img. QEMU wants the
    name within the first cluster and at most 1023 bytes long."""
    if offset == 0 or length == 0:
        return None if offset == 0 or offset <= cluster else False
    if length > 1023 or offset + length > cluster:
        return False
    raw = os.pread(fd, length, offset)
    if len(raw) != length or not _plain(raw):
        return False
    name = raw.decode("ascii")
    return False if ":" in name else name


def _allocated(
    fd: int, file_size: int, cluster: int, size: int, l1_size: int, l1_offset: int, *, zero_flag: bool
) -> int | None:
    entries_per_l2 = cluster // 8
    guest_clusters = (size + cluster - 1) // cluster
    needed_l1 = (guest_clusters + entries_per_l2 - 1) // entries_per_l2
    if l1_size < needed_l1 or l1_size * 8 > _MAX_L1_BYTES:
        return None
    if needed_l1 == 0:
        return 0
    if l1_offset % cluster or l1_offset + needed_l1 * 8 > file_size:
        return None
    l1 = struct.unpack(f">{needed_l1}Q", os.pread(fd, needed_l1 * 8, l1_offset))
    allocated_clusters = 0
    last_index = guest_clusters - 1
    last_holds_data = False
    tables: set[int] = set()  # each L2 table read once: what is read stays within the file
    for l1_index, l1_entry in enumerate(l1):
        l2_offset = l1_entry & _L1_OFFSET_MASK
        if l2_offset == 0:
            continue
        if l2_offset % cluster or l2_offset + cluster > file_size or l2_offset in tables:
            return None
        tables.add(l2_offset)
        first = l1_index * entries_per_l2
        count = min(entries_per_l2, guest_clusters - first)
        raw = os.pread(fd, count * 8, l2_offset)
        if len(raw) != count * 8:
            return None
        for position, entry in enumerate(struct.unpack(f">{count}Q", raw)):
            if not entry:
                continue
            if entry & _COMPRESSED:
                holds_data = True
            elif entry & _RESERVED or (entry & _OFFSET_MASK) % cluster or (entry & _ZERO and not zero_flag):
                return None  # QEMU calls such an entry corrupt: its own words, through qemu-img
            else:
                holds_data = bool(entry & _OFFSET_MASK) and not entry & _ZERO
            if holds_data:
                allocated_clusters += 1
                if first + position == last_index:
                    last_holds_data = True
    allocated = allocated_clusters * cluster
    if last_holds_data:
        allocated -= guest_clusters * cluster - size  # the last cluster, up to the virtual size
    return allocated
