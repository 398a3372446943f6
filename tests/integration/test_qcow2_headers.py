"""Dependants found by reading qcow2 headers in process, on files made by qemu-img (a user's own
overlays the ledger doesn't know) and on hostile directory entries (FIFOs, devices, loops)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from qemu_helpers import make_image, set_backing_unchecked

from snapledger.adapters.storage.qcow2_headers import (
    MAX_BACKING_NAME,
    DependantIndex,
    ScanTooLarge,
    read_backing_names,
)

SIZE = 1 << 20


@pytest.fixture
def vms(tmp_path: Path) -> Path:
    (tmp_path / "vms").mkdir()
    return tmp_path / "vms"


def base_and_overlay(vms: Path) -> tuple[str, str]:
    """base.qcow2 <- base.s1, as the ledger would hold them."""
    base = make_image(vms / "base.qcow2", SIZE)
    return base, make_image(vms / "base.s1", SIZE, backing=base)


def hand_made_header(version: int, offset: int, name: bytes, size: int | None = None) -> bytes:
    """The first bytes of a qcow2 header naming `name` at `offset` (zeros elsewhere)."""
    header = struct.pack(">4sIQI", b"QFI\xfb", version, offset, len(name) if size is None else size)
    return header.ljust(offset, b"\0") + name if name else header


def full_backing_filename(path: str) -> str:
    done = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True,
                          text=True, timeout=60, check=True)
    name: str = json.loads(done.stdout)["full-backing-filename"]
    return name


# ---- reading one header -------------------------------------------------------------------


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_reads_the_backing_qemu_img_wrote_in_either_version(vms: Path, compat: str) -> None:
    base = make_image(vms / "base.qcow2", SIZE)
    top = str(vms / "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"compat={compat}",
                    "-b", base, "-F", "qcow2", top], check=True, timeout=60)
    assert read_backing_names(top) == [base]
    assert read_backing_names(base) == []


def test_relative_names_are_joined_to_the_directory_as_named_like_qemu(
    vms: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (vms / "sub").mkdir()
    base = make_image(vms / "base.qcow2", SIZE)
    top = make_image(vms / "sub" / "top.qcow2", SIZE, backing="../base.qcow2")
    assert read_backing_names(top) == [base] == [os.path.normpath(full_backing_filename(top))]
    monkeypatch.chdir(vms / "sub")  # a relative image path is made absolute first
    assert read_backing_names("top.qcow2") == [base]
    (vms / "elsewhere").symlink_to(vms / "sub")  # as named: not through the symlink's target
    assert read_backing_names(str(vms / "elsewhere" / "top.qcow2")) == [base]
    set_backing_unchecked(top, "file:base.qcow2", "qcow2")
    assert read_backing_names(top) == [str(vms / "sub" / "base.qcow2")]


def test_protocols_are_not_local_files_and_file_is_stripped(vms: Path) -> None:
    top = make_image(vms / "top.qcow2", SIZE)
    for spelled in ("nbd://host:10809/export", "http://host/disk.qcow2", "nbd:host:10809",
                    "ssh://user@host/vms/base.qcow2", "weird:name"):
        set_backing_unchecked(top, spelled, "qcow2")
        assert read_backing_names(top) == [], spelled
    set_backing_unchecked(top, "file:/vms/base.qcow2", "qcow2")
    assert read_backing_names(top) == ["/vms/base.qcow2"]
    set_backing_unchecked(top, "./odd:name", "qcow2")  # a '/' before the ':': a local file
    assert read_backing_names(top) == [str(vms / "odd:name")]


def test_json_backing_names_every_filename_in_it(vms: Path) -> None:
    base, _ = base_and_overlay(vms)
    top = make_image(vms / "top.qcow2", SIZE)
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": base},
            "data-file": {"driver": "file", "filename": "data.raw"},
            "backing": {"driver": "raw", "file.filename": "file:/pool/t.raw"},
            "extra": {"driver": "nbd", "filename": "nbd://host/x"}}
    set_backing_unchecked(top, "json:" + json.dumps(spec), "qcow2")
    assert sorted(read_backing_names(top) or []) == sorted(
        [base, str(vms / "data.raw"), "/pool/t.raw"])
    set_backing_unchecked(top, 'json:{"driver": "raw", "file": "' + base + '"}', "raw")
    assert read_backing_names(top) == [base]
    set_backing_unchecked(top, "json:{not json", "qcow2")
    assert read_backing_names(top) == []


def test_not_qcow2_is_none(vms: Path) -> None:
    raw = make_image(vms / "disk.raw", SIZE, fmt="raw")
    (vms / "short").write_bytes(b"QFI\xfb\0\0\0\3")  # a truncated header
    (vms / "v4").write_bytes(hand_made_header(4, 0, b""))
    (vms / "empty").write_bytes(b"")
    for path in (raw, vms / "short", vms / "v4", vms / "empty", vms, vms / "missing"):
        assert read_backing_names(str(path)) is None, path


def test_a_backing_out_of_bounds_is_no_backing(vms: Path) -> None:
    odd = vms / "odd.qcow2"
    odd.write_bytes(hand_made_header(3, 1 << 40, b"", size=9))  # past the end of the file
    assert read_backing_names(str(odd)) == []
    odd.write_bytes(hand_made_header(3, (1 << 64) - 1, b"", size=9))
    assert read_backing_names(str(odd)) == []
    odd.write_bytes(hand_made_header(3, 4096, b"x" * (MAX_BACKING_NAME + 1)))  # QEMU refuses
    assert read_backing_names(str(odd)) == []
    odd.write_bytes(hand_made_header(3, 4096, b"x" * MAX_BACKING_NAME))
    assert read_backing_names(str(odd)) == [str(vms / ("x" * MAX_BACKING_NAME))]
    # QEMU reads zeros past the end: a name cut by the end of the file is what is before it.
    odd.write_bytes(hand_made_header(3, 100, b"/vms/cut", size=500))
    assert read_backing_names(str(odd)) == ["/vms/cut"]
    odd.write_bytes(hand_made_header(3, 100, b"/vms/a\0/vms/b"))  # a C string ends at NUL
    assert read_backing_names(str(odd)) == ["/vms/a"]
    odd.write_bytes(hand_made_header(3, 100, b"/vms/\xff\xfe"))  # not UTF-8: kept as bytes
    assert [os.fsencode(p) for p in read_backing_names(str(odd)) or []] == [b"/vms/\xff\xfe"]


# ---- the scan ------------------------------------------------------------------------------


def test_a_direct_dependant(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    hand = make_image(vms / "hand.qcow2", SIZE, backing=s1)
    make_image(vms / "unrelated.qcow2", SIZE, backing=base)
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [hand]
    assert index.unreadable == [] and index.too_deep == []


def test_a_chain_of_two_hand_made_overlays_nearest_first(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    e1 = make_image(vms / "z-e1.qcow2", SIZE, backing=s1)
    e2 = make_image(vms / "a-e2.qcow2", SIZE, backing=e1)
    other = make_image(vms / "b-other.qcow2", SIZE, backing=s1)
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [other, e1, e2]
    assert index.dependants(e1, known=[base, s1]) == [e2]



def test_a_file_whose_backing_is_missing_may_rest_on_any_image(vms: Path, tmp_path: Path) -> None:
    """e2 -> e1 -> s1 with e1 moved away: e2 is reported for every image (with the name of the
    file it misses) and so is e3 above it; a known file with a missing backing is not."""
    base, s1 = base_and_overlay(vms)
    e1 = make_image(vms / "e1.qcow2", SIZE, backing=s1)
    e2 = make_image(vms / "e2.qcow2", SIZE, backing=e1)
    e3 = make_image(vms / "e3.qcow2", SIZE, backing=e2)
    other = make_image(vms / "other.qcow2", SIZE, backing=s1)
    os.rename(e1, tmp_path / "e1.qcow2")
    index = DependantIndex.scan([str(vms)])
    maybe = f"{e2} (its backing file {e1} is missing: it may rest on this image)"
    assert index.dependants(s1, known=[base, s1]) == [other, maybe, e3]
    assert index.dependants(base, known=[base, s1]) == [maybe, e3]
    assert index.dependants(base, known=[base, s1, e2]) == []

def test_a_backing_named_through_a_symlinked_directory(vms: Path, tmp_path: Path) -> None:
    base, s1 = base_and_overlay(vms)
    (tmp_path / "alias").symlink_to(vms)
    hand = make_image(vms / "hand.qcow2", SIZE, backing=str(tmp_path / "alias" / "base.s1"))
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [hand]
    assert index.dependants(str(tmp_path / "alias" / "base.s1"), known=[]) == [hand]


def test_a_dependant_in_a_symlinked_subdirectory(vms: Path, tmp_path: Path) -> None:
    base, s1 = base_and_overlay(vms)
    (tmp_path / "mine").mkdir()
    make_image(tmp_path / "mine" / "hand.qcow2", SIZE, backing=s1)
    (vms / "mine").symlink_to(tmp_path / "mine")
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [str(vms / "mine" / "hand.qcow2")]


def test_relative_backing_names(vms: Path, tmp_path: Path) -> None:
    base, s1 = base_and_overlay(vms)
    (vms / "user").mkdir()
    near = make_image(vms / "near.qcow2", SIZE, backing="base.s1")
    far = make_image(vms / "user" / "far.qcow2", SIZE, backing="../base.s1")
    # A symlink named in the VM's directory to a file elsewhere: QEMU joins the relative name to
    # the symlink's directory, where the user opens it.
    (tmp_path / "out").mkdir()
    linked = make_image(tmp_path / "out" / "linked.qcow2", SIZE)
    set_backing_unchecked(linked, "base.s1", "qcow2")
    (vms / "linked.qcow2").symlink_to(tmp_path / "out" / "linked.qcow2")
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [str(vms / "linked.qcow2"), near, far]


def test_a_dotdot_after_a_symlinked_directory_is_resolved_as_the_kernel_does(
    vms: Path, tmp_path: Path,
) -> None:
    (tmp_path / "pool" / "deep").mkdir(parents=True)
    template = make_image(tmp_path / "pool" / "t.qcow2", SIZE)
    (vms / "link").symlink_to(tmp_path / "pool" / "deep")
    hand = make_image(vms / "hand.qcow2", SIZE, backing=str(vms / "link" / ".." / "t.qcow2"))
    assert full_backing_filename(hand) == str(vms / "link" / ".." / "t.qcow2")  # QEMU opens this
    assert read_backing_names(hand) == [str(vms / "t.qcow2")]  # normalised, as asked
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(template, known=[]) == [hand]
    assert index.dependants(str(vms / "t.qcow2"), known=[]) == []


def test_a_json_backing_naming_the_image(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    hand = make_image(vms / "hand.qcow2", SIZE)
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": s1}}
    set_backing_unchecked(hand, "json:" + json.dumps(spec), "qcow2")
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [hand]


def test_a_raw_file_with_a_qcow2_looking_header_is_taken_for_qcow2(vms: Path) -> None:
    # The header can't tell a raw disk whose guest wrote these bytes from a qcow2 file; reporting
    # it as a dependant only ever keeps an image that could have been deleted.
    base, s1 = base_and_overlay(vms)
    raw = vms / "guest.raw"
    raw.write_bytes(hand_made_header(3, 512, s1.encode()).ljust(SIZE, b"\0"))
    assert read_backing_names(str(raw)) == [s1]
    assert DependantIndex.scan([str(vms)]).dependants(s1, known=[base, s1]) == [str(raw)]


def test_truncated_headers_and_backings_past_the_end_are_skipped(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    data = Path(make_image(vms / "hand.qcow2", SIZE, backing=s1)).read_bytes()
    (vms / "short.qcow2").write_bytes(data[:12])
    name_at = struct.unpack_from(">Q", data, 8)[0]
    (vms / "cut.qcow2").write_bytes(data[:name_at])
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [str(vms / "hand.qcow2")]
    assert index.unreadable == []


SCAN_IN_A_CHILD = """
import json, sys
from snapledger.adapters.storage.qcow2_headers import DependantIndex, read_backing_names
vms, image = sys.argv[1], sys.argv[2]
names = {p: read_backing_names(vms + "/" + p) for p in sys.argv[3:]}
index = DependantIndex.scan([vms])
print(json.dumps([index.dependants(image, known=[]), index.unreadable, names]))
"""


def test_fifos_sockets_and_devices_never_block_the_scan(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    os.mkfifo(vms / "a-fifo")  # no writer: a plain open would block forever
    (vms / "a-fifo-link").symlink_to(vms / "a-fifo")
    (vms / "a-zero").symlink_to("/dev/zero")
    (vms / "a-tty").symlink_to("/dev/tty")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(vms / "a-socket"))
    entries = ["a-fifo", "a-fifo-link", "a-zero", "a-tty", "a-socket"]
    try:
        done = subprocess.run([sys.executable, "-c", SCAN_IN_A_CHILD, str(vms), base, *entries],
                              capture_output=True, text=True, timeout=60, check=True)
    finally:
        listener.close()
    assert json.loads(done.stdout) == [[s1], [], dict.fromkeys(entries)]


def test_a_symlink_loop_of_directories(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    (vms / "a" / "b").mkdir(parents=True)
    (vms / "a" / "b" / "up").symlink_to(vms / "a")
    (vms / "a" / "b" / "self").symlink_to(".")
    (vms / "a" / "b" / "dangling").symlink_to(vms / "nowhere")
    (vms / "a" / "b" / "knot").symlink_to("knot")  # a symlink to itself
    hand = make_image(vms / "a" / "b" / "hand.qcow2", SIZE, backing=s1)
    index = DependantIndex.scan([str(vms)], max_depth=50)
    assert index.dependants(s1, known=[base, s1]) == [hand]
    assert index.unreadable == [] and index.too_deep == []


def test_the_same_file_under_two_names_is_reported_once(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    (vms / "z").mkdir()
    hand = make_image(vms / "z" / "hand.qcow2", SIZE, backing=s1)
    os.link(hand, vms / "y-hard.qcow2")
    (vms / "a-link.qcow2").symlink_to(hand)  # a symlink's name only when no own name is found
    (vms / "b").symlink_to(vms / "z")
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1]) == [str(vms / "y-hard.qcow2")]


def test_known_files_are_neither_reported_nor_walked_through(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    s2 = make_image(vms / "base.s2", SIZE, backing=s1)
    hand = make_image(vms / "hand.qcow2", SIZE, backing=s2)  # over the ledger's own s2
    index = DependantIndex.scan([str(vms)])
    assert index.dependants(s1, known=[base, s1, s2]) == []
    assert index.dependants(s1, known=[base, s1]) == [s2, hand]
    (vms / "alias").symlink_to(vms)  # known files are compared resolved
    assert index.dependants(s1, known=[str(vms / "alias" / "base.s2")]) == []


def test_unreadable_candidates_are_listed_not_raised(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    hand = make_image(vms / "hand.qcow2", SIZE, backing=s1)
    if os.geteuid() == 0:
        # root reads any file by mode; not a write-only sysctl, which stat calls a regular file
        secret = "/proc/sys/vm/drop_caches"
        try:
            os.close(os.open(secret, os.O_RDONLY))
            pytest.skip(f"{secret} is readable here")
        except PermissionError:
            pass
        (vms / "secret").symlink_to(secret)
    else:
        Path(vms / "secret").write_bytes(b"QFI\xfb")
        os.chmod(vms / "secret", 0)
    index = DependantIndex.scan([str(vms)])
    assert index.unreadable == [str(vms / "secret")]
    assert index.dependants(s1, known=[base, s1]) == [hand]


def test_missing_directories_are_skipped_and_every_directory_is_scanned(
    vms: Path, tmp_path: Path,
) -> None:
    base, s1 = base_and_overlay(vms)
    (tmp_path / "pool").mkdir()
    hand = make_image(tmp_path / "pool" / "hand.qcow2", SIZE, backing=s1)
    index = DependantIndex.scan([str(tmp_path / "gone"), str(vms), str(tmp_path / "pool") + "/"])
    assert index.dependants(s1, known=[base, s1]) == [hand]
    assert index.unreadable == []


def test_depth_and_file_limits(vms: Path) -> None:
    base, s1 = base_and_overlay(vms)
    (vms / "1" / "2").mkdir(parents=True)
    deep = make_image(vms / "1" / "2" / "hand.qcow2", SIZE, backing=s1)
    assert DependantIndex.scan([str(vms)]).dependants(s1, known=[]) == [deep]
    shallow = DependantIndex.scan([str(vms)], max_depth=1)
    assert shallow.dependants(s1, known=[]) == [] and shallow.too_deep == [str(vms / "1" / "2")]
    DependantIndex.scan([str(vms)], max_files=3)
    with pytest.raises(ScanTooLarge):
        DependantIndex.scan([str(vms)], max_files=2)


def test_a_scan_never_drops_this_processs_locks_on_a_ledger_lying_there(tmp_path: Path) -> None:
    """The ledger's SQLite file may lie among the VM's images. SQLite's locks are POSIX locks,
    which closing *any* descriptor of the file drops for the whole process: a scan that opened
    and closed it would let another process write the ledger at the same time (it was seen to
    damage a ledger). The scan leaves files this process has open alone."""
    import sqlite3

    base = make_image(tmp_path / "base.qcow2", 1 << 20)
    make_image(tmp_path / "hand.qcow2", 1 << 20, backing=base)
    ledger = tmp_path / "ledger.sqlite"
    ours = sqlite3.connect(ledger, isolation_level=None)
    ours.execute("CREATE TABLE t (x)")
    ours.execute("BEGIN IMMEDIATE")  # a RESERVED lock: no other writer may begin
    ours.execute("INSERT INTO t VALUES (1)")
    index = DependantIndex.scan([str(tmp_path)])
    assert index.dependants(base, []) == [str(tmp_path / "hand.qcow2")]
    # another process (SQLite shares lock state between connections of one process) may not
    # begin to write: our lock is still held
    try_to_write = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
        "try:\n    c.execute('BEGIN IMMEDIATE')\nexcept sqlite3.OperationalError as e:\n"
        "    sys.exit(str(e))\n"
    )
    tried = subprocess.run([sys.executable, "-c", try_to_write, str(ledger)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert "locked" in tried.stderr, "the scan dropped this process's SQLite lock"
    ours.execute("COMMIT")
    ours.close()
