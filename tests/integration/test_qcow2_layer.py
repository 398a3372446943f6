"""The in-process qcow2 reader (adapters/storage/qcow2_layer.py) says what qemu-img says, or
nothing: on images written every way qemu-io can (data, zeroes with and without unmapping,
discards, compressed clusters), version 2 and 3, cluster sizes from 512 B to 2 MiB, virtual
sizes that end mid-cluster, backing files named relatively and absolutely, on qcow2 and raw.
Layouts it does not read (extended L2, an external data file) and damaged tables are left to
qemu-img."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapledger.adapters.storage.qcow2_layer import Qcow2Layer, read_layer

KIB = 1024


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qemu_io(path: Path, commands: list[str]) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(path)], check=True, capture_output=True, text=True)


def qemu_img_says(path: Path) -> Qcow2Layer:
    info: dict[str, Any] = json.loads(qemu_img("info", "--output=json", "-U", "-f", "qcow2", str(path)))
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": str(path)}, "backing": None}
    extents = json.loads(qemu_img("map", "--output=json", "-U", "json:" + json.dumps(spec)))
    allocated = sum(int(e["length"]) for e in extents if e.get("data") and e.get("depth", 0) == 0)
    return Qcow2Layer(
        info["virtual-size"], info.get("backing-filename"), info.get("backing-filename-format"), allocated
    )


write = st.tuples(
    st.sampled_from(["write", "write -z", "write -z -u", "discard", "write -c"]),
    st.integers(0, 63),  # where, in 1/64ths of the image
    st.integers(1, 16),  # how much, in 1/64ths
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cluster=st.sampled_from([512, 4 * KIB, 64 * KIB, 2048 * KIB]),
    compat=st.sampled_from(["0.10", "1.1"]),
    size=st.sampled_from([1024 * KIB, 3 * 1024 * KIB + 512 * 3, 8 * 1024 * KIB - 512]),
    backing=st.sampled_from(["none", "relative", "absolute", "raw"]),
    writes=st.lists(write, max_size=8),
)
def test_what_it_reads_is_what_qemu_img_says(
    tmp_path: Path, cluster: int, compat: str, size: int, backing: str, writes: list[tuple[str, int, int]]
) -> None:
    for old in tmp_path.glob("*.qcow2"):
        old.unlink()
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), str(size))
    image = tmp_path / "image.qcow2"
    options = ["-o", f"cluster_size={cluster},compat={compat}"]
    if backing == "none":
        qemu_img("create", "-q", "-f", "qcow2", *options, str(image), str(size))
    elif backing == "raw":
        raw = tmp_path / "base.raw"
        raw.write_bytes(b"")
        os.truncate(raw, size)
        qemu_img("create", "-q", "-f", "qcow2", *options, "-b", str(raw), "-F", "raw", str(image))
    else:
        name = "base.qcow2" if backing == "relative" else str(base)
        qemu_img("create", "-q", "-f", "qcow2", *options, "-b", name, "-F", "qcow2", str(image))
    compressed: list[str] = []  # first, each into clusters nothing was written to (QEMU's rule)
    commands: list[str] = []
    taken: set[int] = set()
    for how, where, length in writes:
        start = where * size // 64 // 512 * 512
        length = min(length * size // 64 // 512 * 512, size - start)
        if how == "write -c":  # compressed writes go by whole clusters
            start, length = start // cluster * cluster, max(length // cluster, 1) * cluster
            clusters = set(range(start // cluster, (start + length) // cluster))
            if start + length > size - size % cluster or clusters & taken:
                continue
            taken |= clusters
        if length <= 0:
            continue
        pattern = "" if how.startswith(("write -z", "discard")) else f"-P {1 + where} "
        (compressed if how == "write -c" else commands).append(f"{how} {pattern}{start} {length}")
    commands = compressed + commands
    if commands:
        qemu_io(image, commands)
    assert read_layer(str(image)) == qemu_img_says(image)


@pytest.mark.parametrize(
    "options",
    [["-o", "extended_l2=on"], ["-o", "data_file={dir}/data.raw"]],
    ids=["extended-l2", "data-file"],
)
def test_a_layout_it_does_not_read_is_left_to_qemu_img(tmp_path: Path, options: list[str]) -> None:
    image = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", *[o.format(dir=tmp_path) for o in options], str(image), "1M")
    assert read_layer(str(image)) is None


def test_damaged_tables_are_left_to_qemu_img(tmp_path: Path) -> None:
    image = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
    qemu_io(image, ["write -P 7 0 64k"])
    assert read_layer(str(image)) is not None
    raw = bytearray(image.read_bytes())
    l1_offset = int.from_bytes(raw[40:48], "big")
    l2_offset = int.from_bytes(raw[l1_offset : l1_offset + 8], "big") & 0x00FF_FFFF_FFFF_FE00
    raw[l2_offset : l2_offset + 8] = (0x8000_0000_0000_0200).to_bytes(8, "big")  # unaligned
    image.write_bytes(bytes(raw))
    assert read_layer(str(image)) is None
    raw[l1_offset : l1_offset + 8] = (1 << 40).to_bytes(8, "big")  # an L2 table past the end
    image.write_bytes(bytes(raw))
    assert read_layer(str(image)) is None
    for target in (tmp_path / "fifo", tmp_path / "raw"):
        if target.name == "fifo":
            os.mkfifo(target)
        else:
            target.write_bytes(b"\0" * 4096)
        assert read_layer(str(target)) is None


# Files qemu-img refuses to open (found by a fuzzer held against qemu-img): never answered for.
REFUSED_BY_QEMU = {
    "unknown compression type": [(104, b"\x07")],
    "zstd without its feature bit": [(104, b"\x01")],
    "the compression feature bit with zlib": [(79, b"\x08")],
    "refcount entries too wide": [(99, b"\x07")],
    "no refcount table": [(56, b"\0\0\0\0")],
    "refcount table unaligned": [(55, b"\x08")],
    "snapshot table unaligned": [(71, b"\x08")],
    "an autoclear feature without its data file": [(95, b"\x02")],
    "backing name offset past the first cluster": [(12, b"\x00\x01\x11\x70")],
}


@pytest.mark.parametrize("damage", sorted(REFUSED_BY_QEMU))
def test_a_file_qemu_img_refuses_is_not_answered_for(tmp_path: Path, damage: str) -> None:
    image = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
    qemu_io(image, ["write -P 5 0 64k"])
    raw = bytearray(image.read_bytes())
    for offset, data in REFUSED_BY_QEMU[damage]:
        raw[offset : offset + len(data)] = data
    image.write_bytes(bytes(raw))
    refused = subprocess.run(["qemu-img", "info", "-U", "-f", "qcow2", str(image)], capture_output=True)
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": str(image)}, "backing": None}
    mapped = subprocess.run(["qemu-img", "map", "-U", "json:" + json.dumps(spec)], capture_output=True)
    assert refused.returncode != 0 or mapped.returncode != 0  # the case is still one qemu-img refuses
    assert read_layer(str(image)) is None


def test_a_zero_flag_in_a_version_2_file_is_not_answered_for(tmp_path: Path) -> None:
    image = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(image), "1M")
    qemu_io(image, ["write -P 5 0 64k"])
    raw = bytearray(image.read_bytes())
    l1_offset = int.from_bytes(raw[40:48], "big")
    l2_offset = int.from_bytes(raw[l1_offset : l1_offset + 8], "big") & 0x00FF_FFFF_FFFF_FE00
    raw[l2_offset + 7] |= 1  # "reads as zeros" exists from version 3 on
    image.write_bytes(bytes(raw))
    assert read_layer(str(image)) is None


def test_a_file_with_bitmaps_is_left_to_qemu_img(tmp_path: Path) -> None:
    image = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
    qemu_img("bitmap", "--add", str(image), "bm0")
    assert read_layer(str(image)) is None
