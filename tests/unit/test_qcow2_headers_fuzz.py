"""Any bytes at all, as a file, are read without an exception: a header is untrusted input."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapledger.adapters.storage.qcow2_headers import (
    DependantIndex,
    read_backing_names,
    reference_of,
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def headers() -> st.SearchStrategy[bytes]:
    """A qcow2 magic, a version near 2-3, then any offset and size and any bytes after."""
    offsets = st.one_of(st.integers(0, 8192), st.integers(0, (1 << 64) - 1))
    return st.builds(
        lambda version, offset, size, rest: struct.pack(">4sIQI", b"QFI\xfb", version, offset,
                                                         size) + rest,
        st.integers(0, 5), offsets, st.one_of(st.integers(0, 1100), st.integers(0, (1 << 32) - 1)),
        st.binary(max_size=6000),
    )


def well_formed(names: list[str] | None) -> bool:
    return names is None or all(
        os.path.isabs(n) and os.path.normpath(n) == n and not n.startswith("//") for n in names)


@given(st.one_of(st.binary(max_size=200), headers()))
def test_any_bytes_never_raise(scratch: Path, data: bytes) -> None:
    path = scratch / "any"
    path.write_bytes(data)
    names = read_backing_names(str(path))
    assert well_formed(names)
    if not data.startswith(b"QFI\xfb"):
        assert names is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["filename", "file", "driver", "x.filename", "backing"]) | st.text(max_size=5),
        inner, max_size=4),
    max_leaves=20,
)


@given(st.one_of(st.text(max_size=100), JSON.map(lambda tree: "json:" + json.dumps(tree)),
                 st.text(max_size=100).map(lambda text: "json:" + text)))
def test_any_backing_name_never_raises(spelled: str) -> None:
    reference = reference_of(spelled)
    assert all(name and "\0" not in name for name in reference.names)


@given(st.lists(st.one_of(st.binary(max_size=64), headers()), max_size=4))
def test_a_scan_of_any_files_never_raises(scratch: Path, files: list[bytes]) -> None:
    directory = scratch / "scan"
    directory.mkdir(exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    for n, data in enumerate(files):
        (directory / f"f{n}").write_bytes(data)
    index = DependantIndex.scan([str(directory)])
    assert index.unreadable == []
    for n in range(len(files)):
        index.dependants(str(directory / f"f{n}"), known=[])
