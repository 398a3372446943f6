"""QemuImgStorage on real qcow2 files: every port method, the refusals, and the resource limits."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from qemu_helpers import (
    CLUSTER,
    assert_reads,
    forget_backing_format,
    held_image,
    make_image,
    mismatched_clusters,
    qemu_io,
    raw_bytes,
    set_backing_unchecked,
    write_clusters,
)

from snapledger.adapters.service.ports import StoragePort
from snapledger.adapters.storage import settled
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.domain.errors import ImageInUse, OutsideAllowedDirs, StorageError, ToolMissing

VSIZE = 16 * CLUSTER


@pytest.fixture
def storage() -> QemuImgStorage:
    return QemuImgStorage()


@pytest.fixture
def chain(tmp_path: Path) -> tuple[str, str, str]:
    """base <- mid <- top, each with its own clusters; mid overrides 1, top overrides 2."""
    base = make_image(tmp_path / "base.qcow2", VSIZE, {0: 0x10, 1: 0x10, 2: 0x10})
    mid = make_image(tmp_path / "mid.qcow2", VSIZE, {1: 0x21, 3: 0x23}, backing=base)
    top = make_image(tmp_path / "top.qcow2", VSIZE, {2: 0x32, 4: 0x34}, backing=mid)
    return base, mid, top


def allocated_clusters(storage: QemuImgStorage, path: str) -> int:
    return storage.inspect(path).allocated // CLUSTER


def test_it_is_a_storage_port(storage: QemuImgStorage) -> None:
    port: StoragePort = storage
    assert port is storage


# ---- helpers are trustworthy: a wrong pattern is seen ---------------------------------------


def test_helpers_see_a_pattern_mismatch(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.qcow2", VSIZE, {3: 0x5A})
    assert mismatched_clusters(image, {3: 0x5A}, 16) == []
    assert mismatched_clusters(image, {3: 0x5B}, 16) == [3]
    assert mismatched_clusters(image, {}, 16) == [3]
    assert mismatched_clusters(image, {3: 0x5A, 7: 1}, 16) == [7]
    with pytest.raises(AssertionError):
        assert_reads(image, {3: 0x5B}, 16)


# ---- inspect ---------------------------------------------------------------------------------


def test_inspect_base_and_overlay(storage: QemuImgStorage, chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    facts = storage.inspect(top)
    seen = os.stat(top)
    assert facts.path == top
    assert facts.format == "qcow2"
    assert (facts.backing, facts.backing_format) == (mid, "qcow2")
    assert facts.virtual_size == VSIZE
    assert facts.allocated == 2 * CLUSTER  # this layer only, not what mid and base hold
    assert (facts.device, facts.inode, facts.size) == (seen.st_dev, seen.st_ino, seen.st_size)
    bottom = storage.inspect(base)
    assert (bottom.backing, bottom.backing_format, bottom.allocated) == (None, None, 3 * CLUSTER)


def test_inspect_counts_neither_zero_clusters_nor_backing_data(
    storage: QemuImgStorage, tmp_path: Path
) -> None:
    base = make_image(tmp_path / "b.qcow2", VSIZE, {c: 0x10 for c in range(8)})
    over = make_image(tmp_path / "o.qcow2", VSIZE, {9: 0x20}, backing=base)
    qemu_io(over, [f"write -z {10 * CLUSTER} {CLUSTER}"])
    assert storage.inspect(over).allocated == CLUSTER


def test_inspect_raw_base(storage: QemuImgStorage, tmp_path: Path) -> None:
    raw = make_image(tmp_path / "disk.img", VSIZE, {0: 0x11, 5: 0x15}, fmt="raw")
    facts = storage.inspect(raw)
    assert (facts.format, facts.backing, facts.virtual_size) == ("raw", None, VSIZE)
    assert facts.allocated == 2 * CLUSTER


def test_inspect_resolves_a_relative_backing(storage: QemuImgStorage, tmp_path: Path) -> None:
    make_image(tmp_path / "base.qcow2", VSIZE)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2",
         str(tmp_path / "over.qcow2")],
        cwd=tmp_path, check=True, timeout=30,
    )
    facts = storage.inspect(str(tmp_path / "over.qcow2"))
    assert facts.backing == str(tmp_path / "base.qcow2")


def test_inspect_missing_file(storage: QemuImgStorage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="No such file"):
        storage.inspect(str(tmp_path / "nope.qcow2"))


def test_inspect_chain(storage: QemuImgStorage, chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    facts = storage.inspect_chain(top)
    assert [f.path for f in facts] == [top, mid, base]
    assert [f.allocated // CLUSTER for f in facts] == [2, 2, 3]
    assert [f.backing for f in facts] == [mid, base, None]


def test_inspect_chain_refuses_a_loop(storage: QemuImgStorage, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.qcow2", VSIZE)
    b = make_image(tmp_path / "b.qcow2", VSIZE, backing=a)
    set_backing_unchecked(a, b, "qcow2")
    with pytest.raises(StorageError, match="loops"):
        storage.inspect_chain(a)
    with pytest.raises(StorageError, match="loops"):
        storage.commit(a, b, fmt="qcow2")  # the walk before a merge sees it too
    os.symlink(a, tmp_path / "alias.qcow2")  # the same file under another name
    set_backing_unchecked(b, str(tmp_path / "alias.qcow2"), "qcow2")
    with pytest.raises(StorageError, match="loops"):
        storage.inspect_chain(a)
    with pytest.raises(StorageError, match="loops"):
        storage.pull(a, None, None, fmt="qcow2")


def test_inspect_chain_refuses_a_too_long_chain(tmp_path: Path) -> None:
    below = make_image(tmp_path / "0.qcow2", VSIZE)
    for n in range(1, 5):
        below = make_image(tmp_path / f"{n}.qcow2", VSIZE, backing=below)
    assert len(QemuImgStorage(max_chain=5).inspect_chain(below)) == 5
    with pytest.raises(StorageError, match="longer than 4"):
        QemuImgStorage(max_chain=4).inspect_chain(below)


def test_inspect_chain_uses_the_recorded_backing_format(
    storage: QemuImgStorage, tmp_path: Path
) -> None:
    raw = make_image(tmp_path / "disk.img", VSIZE, {0: 1}, fmt="raw")
    over = make_image(tmp_path / "o.qcow2", VSIZE, backing=raw, backing_format="raw")
    assert [f.format for f in storage.inspect_chain(over)] == ["qcow2", "raw"]
    set_backing_unchecked(over, raw, "qcow2")  # a lie: qemu-img must not probe, and fails
    with pytest.raises(StorageError) as caught:
        storage.inspect_chain(over)
    message = str(caught.value)
    assert "\n" not in message
    assert "qemu-img info" in message and "qcow2" in message  # qemu-img's own words are kept


# ---- refused paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backing",
    [
        'json:{"driver":"file","filename":"/etc/hostname"}',
        "nbd://localhost:10809/export",
        "http://example.com/disk.qcow2",
        "file:/etc/hostname",
        "nbd:localhost:10809",
    ],
)
def test_protocol_backings_are_refused(
    storage: QemuImgStorage, tmp_path: Path, backing: str
) -> None:
    over = make_image(tmp_path / "o.qcow2", VSIZE)
    set_backing_unchecked(over, backing, "raw")
    with pytest.raises(StorageError, match="not a plain local file path"):
        storage.inspect(over)
    with pytest.raises(StorageError, match="not a plain local file path"):
        storage.inspect_chain(over)
    child = str(tmp_path / "child.qcow2")
    with pytest.raises(StorageError):
        storage.create_overlay(child, over, "qcow2", VSIZE)
    assert not os.path.lexists(child)


def a_block_device(tmp_path: Path) -> str:
    node = tmp_path / "blk"
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 0))
        return str(node)
    except OSError:
        for name in sorted(os.listdir("/dev")):
            if stat.S_ISBLK(os.stat(f"/dev/{name}").st_mode):
                return f"/dev/{name}"
    raise AssertionError("no block device to test with")


@pytest.mark.parametrize("kind", ["char", "block"])
def test_device_backings_are_refused(storage: QemuImgStorage, tmp_path: Path, kind: str) -> None:
    device = "/dev/null" if kind == "char" else a_block_device(tmp_path)
    over = make_image(tmp_path / "o.qcow2", VSIZE)
    set_backing_unchecked(over, device, "raw")
    assert storage.inspect(over).backing == device  # a plain path, so far
    with pytest.raises(StorageError, match="device node"):
        storage.inspect_chain(over)
    with pytest.raises(StorageError, match="device node"):
        storage.create_overlay(str(tmp_path / "c.qcow2"), device, "raw", VSIZE)
    with pytest.raises(StorageError, match="device node"):
        storage.inspect(device)
    with pytest.raises(StorageError, match="device node"):
        storage.pull(over, None, None, fmt="qcow2")
    assert not os.path.lexists(tmp_path / "c.qcow2")


def test_fifo_is_refused_without_hanging(storage: QemuImgStorage, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="not a regular file"):
        storage.inspect(str(fifo))


def test_external_data_file_is_refused(storage: QemuImgStorage, tmp_path: Path) -> None:
    image = tmp_path / "d.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path}/data.raw",
         str(image), str(VSIZE)],
        check=True, timeout=30,
    )
    with pytest.raises(StorageError, match="external data file"):
        storage.inspect(str(image))


@pytest.mark.parametrize("path", ["relative.qcow2", "/tmp/../tmp/x.qcow2", "/tmp/a:b.qcow2", ""])
def test_odd_paths_are_refused(storage: QemuImgStorage, path: str) -> None:
    with pytest.raises(StorageError):
        storage.inspect(path)
    with pytest.raises(StorageError):
        storage.delete(path)


def test_allowed_dirs(tmp_path: Path) -> None:
    inside, outside = tmp_path / "pool", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    storage = QemuImgStorage(allowed_dirs=[str(inside)])
    template = make_image(outside / "template.qcow2", VSIZE, {0: 1})
    mine = make_image(inside / "mine.qcow2", VSIZE, {0: 2})
    over = make_image(inside / "over.qcow2", VSIZE, backing=template)
    assert storage.inspect_chain(mine)[0].path == mine
    with pytest.raises(StorageError, match="outside the allowed directories"):
        storage.inspect(template)
    with pytest.raises(StorageError, match="outside the allowed directories"):
        storage.inspect_chain(over)
    with pytest.raises(StorageError, match="outside the allowed directories"):
        storage.create_overlay(str(outside / "new.qcow2"), mine, "qcow2", VSIZE)
    with pytest.raises(StorageError, match="outside the allowed directories"):
        storage.create_overlay(str(inside / "new.qcow2"), template, "qcow2", VSIZE)
    os.symlink(template, inside / "link.qcow2")  # a symlink inside that leads outside
    with pytest.raises(StorageError, match="outside the allowed directories"):
        storage.inspect(str(inside / "link.qcow2"))
    with pytest.raises(StorageError, match="outside the allowed directories"):
        storage.delete(template)
    assert sorted(os.listdir(inside)) == ["link.qcow2", "mine.qcow2", "over.qcow2"]
    assert os.path.exists(template)


def test_inspect_chain_within_stops_before_a_file_outside(storage: QemuImgStorage,
                                                          tmp_path: Path) -> None:
    vm, pool, elsewhere = tmp_path / "vm", tmp_path / "pool", tmp_path / "elsewhere"
    for directory in (vm, pool, elsewhere):
        directory.mkdir()
    template = make_image(pool / "template.qcow2", VSIZE, {0: 1})
    disk = make_image(vm / "disk.qcow2", VSIZE, {1: 2}, backing=template)
    assert [f.path for f in storage.inspect_chain(disk, [str(vm), str(pool)])] == [disk, template]
    with pytest.raises(OutsideAllowedDirs) as caught:
        storage.inspect_chain(disk, [str(vm)])
    assert (caught.value.path, caught.value.below) == (template, disk)
    # the file outside is never opened: a missing one is refused for where it is, not as missing
    set_backing_unchecked(template, str(elsewhere / "missing.qcow2"), "qcow2")
    with pytest.raises(OutsideAllowedDirs, match="missing.qcow2"):
        storage.inspect_chain(disk, [str(vm), str(pool)])
    # a symlinked directory inside that leads outside, and a disk that is itself such a symlink
    (vm / "tpl").symlink_to(pool)
    set_backing_unchecked(disk, str(vm / "tpl" / "template.qcow2"), "qcow2")
    with pytest.raises(OutsideAllowedDirs) as caught:
        storage.inspect_chain(disk, [str(vm)])
    assert caught.value.resolved == template
    (vm / "link.qcow2").symlink_to(template)
    with pytest.raises(OutsideAllowedDirs) as caught:
        storage.inspect_chain(str(vm / "link.qcow2"), [str(vm)])
    assert (caught.value.resolved, caught.value.below) == (template, None)
    assert storage.resolve(str(vm / "tpl" / "x")) == str(pool / "x")


def test_an_image_another_process_holds_is_image_in_use(
    storage: QemuImgStorage, chain: tuple[str, str, str]
) -> None:
    base, mid, top = chain
    with held_image(mid):
        before = raw_bytes(top)
        for merge in (lambda: storage.commit(top, mid, fmt="qcow2"),
                      lambda: storage.pull(top, base, "qcow2", fmt="qcow2"),
                      lambda: storage.rebase_unsafe(mid, None, None, fmt="qcow2")):
            with pytest.raises(ImageInUse, match=f"another process still holds {mid}") as caught:
                merge()
            assert caught.value.exit_code == 4
        assert raw_bytes(top) == before and storage.inspect(top).backing == mid
    storage.commit(top, mid, fmt="qcow2")  # the lock is gone


# ---- create_overlay ------------------------------------------------------------------------


def test_create_overlay(storage: QemuImgStorage, chain: tuple[str, str, str], tmp_path: Path) -> None:
    _, _, top = chain
    new = str(tmp_path / "top.s1")
    storage.create_overlay(new, top, "qcow2", VSIZE)
    facts = storage.inspect(new)
    assert (facts.format, facts.backing, facts.backing_format) == ("qcow2", top, "qcow2")
    assert (facts.virtual_size, facts.allocated) == (VSIZE, 0)
    assert_reads(new, {0: 0x10, 1: 0x21, 2: 0x32, 3: 0x23, 4: 0x34}, 16)
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", new],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    assert '"backing-filename-format": "qcow2"' in info  # recorded explicitly, never probed


def test_create_overlay_is_exclusive(storage: QemuImgStorage, chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    before = Path(mid).read_bytes()
    with pytest.raises(StorageError, match="exists"):
        storage.create_overlay(mid, base, "qcow2", VSIZE)
    assert Path(mid).read_bytes() == before


@pytest.mark.parametrize("dangling", [False, True])
def test_create_overlay_refuses_a_symlink(
    storage: QemuImgStorage, chain: tuple[str, str, str], tmp_path: Path, dangling: bool
) -> None:
    base, mid, top = chain
    target = tmp_path / "target.qcow2"
    if not dangling:
        target.write_bytes(b"precious")
    link = tmp_path / "link.qcow2"
    os.symlink(target, link)
    with pytest.raises(StorageError, match="exists"):
        storage.create_overlay(str(link), top, "qcow2", VSIZE)
    assert os.path.islink(link)
    if dangling:
        assert not target.exists()
    else:
        assert target.read_bytes() == b"precious"


@pytest.mark.parametrize("what", ["file", "symlink"])
def test_create_overlay_is_exclusive_even_when_the_path_appears_after_the_check(
    chain: tuple[str, str, str], tmp_path: Path, what: str
) -> None:
    """The lstat check can race; O_EXCL|O_NOFOLLOW on the create itself can't. The race is
    staged through the adapter's own door, the qemu-img it runs: a wrapper that puts a file (or
    a symlink to a victim) at the new path while the backing is inspected, after the check."""
    _, _, top = chain
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "new.qcow2"
    plant = f"printf theirs > {path}" if what == "file" else f"ln -s {victim} {path}"
    wrapper = tmp_path / "qemu-img-racing"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = info ] && [ ! -e {path} ] && [ ! -L {path} ]; then {plant}; fi\n'
        'exec qemu-img "$@"\n'
    )
    wrapper.chmod(0o755)
    racing = QemuImgStorage(qemu_img=str(wrapper), read_in_process=False)  # `info` runs qemu-img
    with pytest.raises(StorageError, match="exclusively"):
        racing.create_overlay(str(path), top, "qcow2", VSIZE)
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(path) if what == "symlink" else path.read_bytes() == b"theirs"


def test_create_overlay_opens_the_backing_with_the_format_it_is_given(
    storage: QemuImgStorage, chain: tuple[str, str, str], tmp_path: Path
) -> None:
    """The format comes from the ledger and is never guessed: a file that can't be opened in
    that format is refused; any file opens as raw (a raw disk whose guest wrote a qcow2 header
    stays raw), so a qcow2 file given as raw is taken as raw bytes."""
    base, _, _ = chain
    raw = make_image(tmp_path / "disk.img", VSIZE, fmt="raw")
    for backing, fmt in ((raw, "qcow2"), (base, "vmdk")):
        with pytest.raises(StorageError):
            storage.create_overlay(str(tmp_path / "new.qcow2"), backing, fmt, VSIZE)
        assert not os.path.lexists(tmp_path / "new.qcow2")
    storage.create_overlay(str(tmp_path / "new.qcow2"), raw, "raw", VSIZE)
    assert storage.inspect(str(tmp_path / "new.qcow2")).backing_format == "raw"
    storage.create_overlay(str(tmp_path / "over-bytes.qcow2"), base, "raw", VSIZE)
    assert storage.inspect(str(tmp_path / "over-bytes.qcow2")).backing_format == "raw"


def test_a_failed_create_leaves_no_file(storage: QemuImgStorage, chain: tuple[str, str, str],
                                        tmp_path: Path) -> None:
    base, _, _ = chain
    new = tmp_path / "new.qcow2"
    with pytest.raises(StorageError, match="failed"):
        storage.create_overlay(str(new), base, "qcow2", -5)  # qemu-img refuses the size
    assert not os.path.lexists(new)
    with pytest.raises(StorageError, match="No such file"):
        storage.create_overlay(str(new), str(tmp_path / "missing.qcow2"), "qcow2", VSIZE)
    assert not os.path.lexists(new)


# ---- commit --------------------------------------------------------------------------------


def test_commit(storage: QemuImgStorage, chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    reads = raw_bytes(top)
    inode = os.stat(top).st_ino
    storage.commit(top, mid, fmt="qcow2")
    assert_reads(mid, {0: 0x10, 1: 0x21, 2: 0x32, 3: 0x23, 4: 0x34}, 16)
    assert_reads(base, {0: 0x10, 1: 0x10, 2: 0x10}, 16)  # below the base: untouched
    assert raw_bytes(top) == reads  # top stays valid (-d: not emptied)
    assert allocated_clusters(storage, top) == 2
    assert allocated_clusters(storage, mid) == 4
    assert os.stat(top).st_ino == inode


def test_commit_only_into_the_direct_backing(storage: QemuImgStorage,
                                             chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    with pytest.raises(StorageError, match="not the backing file"):
        storage.commit(top, base, fmt="qcow2")
    with pytest.raises(StorageError, match="not the backing file"):
        storage.commit(base, mid, fmt="qcow2")
    assert_reads(base, {0: 0x10, 1: 0x10, 2: 0x10}, 16)


def test_commit_refuses_a_chain_without_recorded_backing_format(
    storage: QemuImgStorage, chain: tuple[str, str, str]
) -> None:
    base, mid, top = chain
    forget_backing_format(top)
    assert storage.inspect(top).backing_format is None
    with pytest.raises(StorageError, match="would probe"):
        storage.commit(top, mid, fmt="qcow2")
    with pytest.raises(StorageError, match="would probe"):
        storage.pull(top, base, "qcow2", fmt="qcow2")
    with pytest.raises(StorageError, match="would probe"):  # formats are never guessed
        storage.inspect_chain(top)


# ---- pull ----------------------------------------------------------------------------------


def test_pull_within_the_chain_keeps_content_and_inode(
    storage: QemuImgStorage, chain: tuple[str, str, str]
) -> None:
    base, mid, top = chain
    reads, inode = raw_bytes(top), os.stat(top).st_ino
    storage.pull(top, base, "qcow2", fmt="qcow2")
    facts = storage.inspect(top)
    assert (facts.backing, facts.backing_format, facts.inode) == (base, "qcow2", inode)
    assert raw_bytes(top) == reads
    assert facts.allocated == 4 * CLUSTER  # its own 2, plus mid's 2 it lacked
    os.unlink(mid)  # no longer needed by top
    assert raw_bytes(top) == reads


def test_pull_to_no_backing_flattens(storage: QemuImgStorage, chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    reads, inode = raw_bytes(top), os.stat(top).st_ino
    storage.pull(top, None, None, fmt="qcow2")
    facts = storage.inspect(top)
    assert (facts.backing, facts.backing_format, facts.inode) == (None, None, inode)
    assert raw_bytes(top) == reads
    assert facts.allocated == 5 * CLUSTER


def test_pull_needs_a_backing_in_the_chain(storage: QemuImgStorage,
                                           chain: tuple[str, str, str], tmp_path: Path) -> None:
    base, mid, top = chain
    other = make_image(tmp_path / "other.qcow2", VSIZE)
    for new in (other, top):
        with pytest.raises(StorageError, match="is not below"):
            storage.pull(top, new, "qcow2", fmt="qcow2")
    with pytest.raises(StorageError, match="not qcow2|not raw"):
        storage.pull(top, base, "raw", fmt="qcow2")
    assert storage.inspect(top).backing == mid


# ---- rebase_unsafe, delete, exists ---------------------------------------------------------


def test_rebase_unsafe_only_moves_the_pointer(storage: QemuImgStorage,
                                              chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    storage.rebase_unsafe(top, base, "qcow2", fmt="qcow2")
    assert (storage.inspect(top).backing, storage.inspect(top).allocated) == (base, 2 * CLUSTER)
    assert_reads(top, {0: 0x10, 1: 0x10, 2: 0x32, 4: 0x34}, 16)  # mid's data is no longer seen
    storage.rebase_unsafe(top, None, None, fmt="qcow2")
    assert storage.inspect(top).backing is None
    assert_reads(top, {2: 0x32, 4: 0x34}, 16)
    with pytest.raises(StorageError, match="No such file"):
        storage.rebase_unsafe(top, base + ".missing", "qcow2", fmt="qcow2")
    raw = make_image(str(top) + ".raw", VSIZE, fmt="raw")
    with pytest.raises(StorageError):  # the new backing must open in the format it will have
        storage.rebase_unsafe(top, raw, "qcow2", fmt="qcow2")
    assert storage.inspect(top).backing is None


def test_delete_and_exists(storage: QemuImgStorage, chain: tuple[str, str, str],
                           tmp_path: Path) -> None:
    base, mid, top = chain
    link = tmp_path / "link.qcow2"
    os.symlink(top, link)
    assert storage.exists(top) and storage.exists(str(link))
    with pytest.raises(StorageError, match="symlink"):
        storage.delete(str(link))
    assert os.path.exists(top) and os.path.islink(link)
    storage.delete(top)
    assert not storage.exists(top)
    assert storage.exists(str(link))  # dangling, but the path is taken
    with pytest.raises(StorageError, match="No such file"):
        storage.delete(top)
    with pytest.raises(StorageError, match="not a regular file"):
        storage.delete(str(tmp_path))


# ---- processes: argument lists, timeouts, resource limits ----------------------------------


def test_every_call_is_an_argument_list_with_a_timeout(
    monkeypatch: pytest.MonkeyPatch, chain: tuple[str, str, str], tmp_path: Path
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    real_run = subprocess.run

    def spy(args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real_run(args, **kwargs)

    merges: list[tuple[Any, dict[str, Any]]] = []
    real_popen = subprocess.Popen

    def spy_popen(args: Any, **kwargs: Any) -> Any:
        merges.append((args, kwargs))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    monkeypatch.setattr(subprocess, "Popen", spy_popen)
    storage = QemuImgStorage(timeout=17, merge_timeout=99, read_in_process=False)
    base, mid, top = chain
    storage.inspect_chain(top)
    storage.create_overlay(str(tmp_path / "new"), top, "qcow2", VSIZE)
    storage.commit(str(tmp_path / "new"), top, fmt="qcow2")
    storage.pull(top, base, "qcow2", fmt="qcow2")
    storage.rebase_unsafe(str(tmp_path / "new"), base, "qcow2", fmt="qcow2")
    assert {args[1] for args, _ in calls} == {"info", "map", "create", "rebase"}
    for args, kwargs in calls:
        assert isinstance(args, list) and all(isinstance(a, str) for a in args)
        assert not kwargs.get("shell")
        assert kwargs["timeout"] == 17
        assert (kwargs["preexec_fn"] is not None) == (args[1] in ("info", "map"))
    # merges stream qemu-img's progress; their timeout is enforced while reading it
    merges = [(a, k) for a, k in merges if a[1] in ("commit", "rebase") and "-u" not in a]
    assert [args[1] for args, _ in merges] == ["commit", "rebase"]  # (run() uses Popen too)
    for args, kwargs in merges:
        assert isinstance(args, list) and all(isinstance(a, str) for a in args)
        assert not kwargs.get("shell") and "-p" in args and "-u" not in args


class ToldMerges:
    """A MergeListener (adapters/service/ports.py) that keeps what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[object, ...]] = []

    def started(self, step: str, source: str, target: str, total_bytes: int) -> None:
        self.told.append((step, source, target, total_bytes))

    def advanced(self, fraction: float) -> None:
        self.told.append(("advanced", fraction))

    def finished(self) -> None:
        self.told.append(("finished",))


def test_merges_report_progress(chain: tuple[str, str, str]) -> None:
    base, mid, top = chain
    storage = QemuImgStorage()
    listener = ToldMerges()
    storage.progress = listener
    top_bytes = storage.inspect(top, "qcow2").allocated
    storage.commit(top, mid, fmt="qcow2")
    first, *advanced, last = listener.told
    assert first == ("commit", top, mid, top_bytes) and last == ("finished",)
    seen = [float(str(fraction)) for _, fraction in advanced]
    assert seen and all(0.0 <= f <= 1.0 for f in seen) and seen[-1] == 1.0
    assert seen == sorted(seen)
    listener.told.clear()
    storage.pull(mid, None, None, fmt="qcow2")  # base's data into mid, which then stands alone
    assert listener.told[0][:3] == ("pull", base, mid) and listener.told[-1] == ("finished",)


def fake_qemu_img(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-qemu-img"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_info_runs_under_resource_limits(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.qcow2", VSIZE)
    report = tmp_path / "limits"
    fake = fake_qemu_img(tmp_path, f'cat /proc/self/limits > "{report}"; exit 1')
    with pytest.raises(StorageError):
        QemuImgStorage(qemu_img=fake).inspect(image)
    limits = {line[:26].strip(): line[26:].split() for line in report.read_text().splitlines()}
    assert limits["Max cpu time"][:2] == ["30", "30"]
    assert limits["Max address space"][:2] == [str(1 << 30)] * 2
    assert limits["Max core file size"][:2] == ["0", "0"]


def test_a_cpu_hog_is_killed(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.qcow2", VSIZE)
    fake = fake_qemu_img(tmp_path, "while :; do :; done")
    started = time.monotonic()
    with pytest.raises(StorageError, match="SIGXCPU|SIGKILL"):
        QemuImgStorage(qemu_img=fake, probe_cpu_seconds=1, timeout=60).inspect(image)
    assert time.monotonic() - started < 30


def test_real_qemu_img_info_fails_cleanly_when_memory_is_short(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.qcow2", VSIZE)
    assert QemuImgStorage().inspect(image).virtual_size == VSIZE  # 1 GiB is plenty
    with pytest.raises(StorageError, match="qemu-img info"):
        QemuImgStorage(probe_address_space=8 << 20).inspect(image)


def test_a_hung_qemu_img_times_out(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.qcow2", VSIZE)
    fake = fake_qemu_img(tmp_path, "exec sleep 30")
    started = time.monotonic()
    with pytest.raises(StorageError, match="timed out after 0.5 s"):
        QemuImgStorage(qemu_img=fake, timeout=0.5).inspect(image)
    assert time.monotonic() - started < 10


def test_a_missing_binary_is_the_tools_environment_not_a_storage_error(tmp_path: Path) -> None:
    """qemu-img missing is the tool's own trouble (exit 1), never a finding about the disks."""
    image = make_image(tmp_path / "a.qcow2", VSIZE)
    top = make_image(tmp_path / "top.qcow2", VSIZE, backing=image)
    missing = QemuImgStorage(qemu_img=str(tmp_path / "no-such-qemu-img"))
    with pytest.raises(ToolMissing, match="can't run .*qemu-utils") as caught:
        missing.inspect(image)  # the format probed: only qemu-img can
    assert not isinstance(caught.value, StorageError) and caught.value.exit_code == 1
    with pytest.raises(ToolMissing):
        missing.commit(top, image, fmt="qcow2")


def test_writes_by_qemu_io_are_seen(storage: QemuImgStorage, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.qcow2", VSIZE)
    write_clusters(image, {c: 0x40 + c for c in range(0, 16, 3)})
    assert storage.inspect(image).allocated == 6 * CLUSTER
    assert_reads(image, {c: 0x40 + c for c in range(0, 16, 3)}, 16)


# ---- qemu-img asked once per file that has not changed (adapters/storage/settled.py) ----------


def qemu_img_calls(storage: QemuImgStorage, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each answer asked for (of qemu-img, or read in process), as "info NAME" or "map NAME"."""
    calls: list[str] = []
    real_info, real_map = storage._ask_info, storage._ask_allocated

    def ask_info(path: str, fmt: str | None) -> Any:
        calls.append(f"info {Path(path).name}")
        return real_info(path, fmt)

    def ask_map(path: str, fmt: str) -> Any:
        calls.append(f"map {Path(path).name}")
        return real_map(path, fmt)

    monkeypatch.setattr(storage, "_ask_info", ask_info)
    monkeypatch.setattr(storage, "_ask_allocated", ask_map)
    return calls


def test_an_unchanged_settled_file_is_asked_about_once(
    storage: QemuImgStorage, chain: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settled, "SETTLED_NS", -1)  # as if every file had been left alone long ago
    calls = qemu_img_calls(storage, monkeypatch)
    first = storage.inspect_chain(chain[2])
    assert len(calls) == 6  # info and map of each of the three layers
    assert storage.inspect_chain(chain[2]) == first and len(calls) == 6
    write_clusters(chain[1], {5: 0x55})  # the middle layer changes: it alone is asked again
    again = storage.inspect_chain(chain[2])
    assert sorted(calls[6:]) == ["info mid.qcow2", "map mid.qcow2"]
    assert again[1].allocated == first[1].allocated + CLUSTER


def test_an_answer_about_a_file_written_a_moment_ago_is_not_kept(
    storage: QemuImgStorage, chain: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its times may not move for a second write in the same clock tick, so nothing about it
    can be told from them yet: it is asked about every time until it has settled."""
    calls = qemu_img_calls(storage, monkeypatch)
    write_clusters(chain[0], {7: 0x77})
    storage.inspect(chain[0])
    storage.inspect(chain[0])
    assert calls == ["info base.qcow2", "map base.qcow2"] * 2
