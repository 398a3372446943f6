"""Whole histories on real qcow2 images, driven through the command line (or the service, for
fault injection), with every byte of every snapshot and of the present checked by qemu-io.

snapledger is asked only which file holds which snapshot and which file is active (`show
--json`); what those files read is known from the writes the test made, and is read back with
qemu-io through the whole backing chain. Which files exist is seen with `qemu-img info
--backing-chain`, never taken from the ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import CLI, Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, merges_in_group, qemu_io, write_clusters

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.ports import Dependants, Sharing
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.domain.images import ImageFacts

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


# ---- seeing the disk without the ledger ------------------------------------------------


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def qemu_chain(path: str) -> list[str]:
    """`path` and every backing file below it, as qemu-img sees them."""
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return [os.path.normpath(info["filename"]) for info in json.loads(done.stdout)]


def image_files(directory: Path) -> set[str]:
    return {str(p) for p in directory.iterdir() if p.is_file() and ".sqlite" not in p.name}


def assert_no_leftovers(directory: Path, tops: Iterable[str], kept: Iterable[str] = ()) -> None:
    """Every image file in `directory` is in the chain of a snapshot, a present, or is `kept`."""
    needed = {p for top in tops for p in qemu_chain(top)} | set(kept)
    assert image_files(directory) == needed, (
        f"leftovers {sorted(image_files(directory) - needed)}, "
        f"missing {sorted(needed - image_files(directory))}"
    )


class History:
    """One VM (disk vda) driven through the CLI; what each snapshot and the present must read
    is known from the test's own writes. `state` is `show --json` after the last command."""

    def __init__(self, cli: Cli, vm: str, disk: str, content: Mapping[int, int]) -> None:
        self.cli, self.vm = cli, vm
        cli.run("adopt", vm, "--disk", f"vda={disk}")
        self.snapshots: dict[str, dict[int, int]] = {}
        self.present = dict(content)
        self.refresh()

    def refresh(self) -> Any:
        self.state = self.cli.json("show", self.vm)
        return self.state

    def active(self) -> str:
        return str(self.state["disks"]["vda"]["active"])

    def tops(self) -> list[str]:
        return [self.active()] + [s["disks"]["vda"] for s in self.state["snapshots"]]

    def write(self, clusters: Mapping[int, int]) -> None:
        write_clusters(self.active(), clusters)
        self.present.update(clusters)

    def snapshot(self, name: str) -> None:
        self.cli.run("snapshot", self.vm, name)
        self.snapshots[name] = dict(self.present)
        self.refresh()

    def revert(self, name: str) -> None:
        self.cli.run("revert", self.vm, name)
        self.present = dict(self.snapshots[name])
        self.refresh()

    def delete(self, name: str, *options: str, expect: int = 0) -> Any:
        if expect:
            before = self.cli.state()
            self.cli.run("delete", self.vm, name, *options, expect=expect)
            assert self.cli.state() == before, f"refused delete {name} {options} changed something"
            return None
        plan = self.cli.json("delete", self.vm, name, *options)
        del self.snapshots[name]
        self.refresh()
        return plan

    def check(self) -> None:
        """Every snapshot and the present read exactly what was written, cluster by cluster."""
        assert {s["name"] for s in self.state["snapshots"]} == set(self.snapshots)
        for snap in self.state["snapshots"]:
            assert_reads(snap["disks"]["vda"], self.snapshots[snap["name"]], CLUSTERS)
        assert_reads(self.active(), self.present, CLUSTERS)


# ---- 1. a two-branch tree deleted in every order -----------------------------------------


def two_branch_tree(cli: Cli) -> History:
    """s0 -> s1 -> {s2, s3}; s0 frozen in the user's base.qcow2, s1 in a managed overlay."""
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10, 1: 0x10})
    h = History(cli, "vm", base, {0: 0x10, 1: 0x10})
    h.snapshot("s0")
    h.write({1: 0x21, 2: 0x21})
    h.snapshot("s1")
    h.write({2: 0x22, 3: 0x22})
    h.snapshot("s2")
    h.write({4: 0x23})  # lost by the revert, as documented
    h.revert("s1")
    h.write({3: 0x31, 5: 0x31})
    h.snapshot("s3")
    h.write({6: 0x32, 0: 0x32})
    return h


PULL = ("--branches", "pull")
ORDERS: dict[str, list[tuple[str, tuple[str, ...], int]]] = {
    # once s0 is gone, s1 lives in the user's base.qcow2: an adopted branch point, metadata only
    "tail-to-head": [("s0", (), 0), ("s1", PULL, 0), ("s2", (), 0), ("s3", (), 0)],
    "head-to-tail": [("s3", (), 0), ("s2", (), 0), ("s1", (), 0), ("s0", (), 0)],
    "branch-point-last": [("s0", (), 0), ("s2", (), 0), ("s3", (), 0), ("s1", (), 0)],
    "branch-point-first-pull": [
        ("s1", (), 3), ("s1", PULL, 0), ("s3", (), 0), ("s0", (), 0), ("s2", (), 0)
    ],
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_a_two_branch_tree_keeps_every_byte_in_any_delete_order(cli: Cli, order: str) -> None:
    h = two_branch_tree(cli)
    h.check()
    base = cli.path("base.qcow2")
    for name, options, expect in ORDERS[order]:
        h.delete(name, *options, expect=expect)
        h.check()
        cli.run("verify")
        assert os.path.exists(base)  # the user's own disk is never deleted
        assert_no_leftovers(cli.dir, h.tops())
    assert h.snapshots == {}


# ---- 2. swap-disk ------------------------------------------------------------------------


def test_a_swapped_in_disk_is_never_changed_by_a_revert_and_the_swapped_out_one_stays(
    cli: Cli,
) -> None:
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10, 1: 0x10})
    h = History(cli, "vm", base, {0: 0x10, 1: 0x10})
    h.snapshot("s0")
    h.write({1: 0x21})
    h.snapshot("s1")
    h.write({2: 0x22})
    out1, out1_reads = h.active(), dict(h.present)  # swapped out: a managed snapshot-less present

    new = make_image(cli.path("new.qcow2"), SIZE, {0: 0x50, 5: 0x55})
    cli.run("swap-disk", "vm", "vda", new)
    h.refresh()
    h.present = {0: 0x50, 5: 0x55}
    assert h.active() == new
    h.write({6: 0x56})  # the guest writes the swapped-in image while it is active
    h.snapshot("s2")  # new.qcow2 is frozen by s2 now: not active any more
    h.write({7: 0x57})
    new_digest = sha256(new)

    for n, target in enumerate(["s1", "s2", "s0", "s2", "s1"]):
        h.revert(target)
        assert sha256(new) == new_digest, f"revert to {target} changed the swapped-in image"
        h.write({8: 0x80 + n})
        assert sha256(new) == new_digest
        h.check()
        assert_reads(out1, out1_reads, CLUSTERS)  # kept, detached
        cli.run("verify")

    # a second swap-in, abandoned by a revert while it is the active image
    other = make_image(cli.path("other.qcow2"), SIZE, {0: 0x60})
    out2, out2_reads = h.active(), dict(h.present)
    cli.run("swap-disk", "vm", "vda", other)
    h.refresh()
    h.present = {0: 0x60}
    h.write({1: 0x61})
    other_digest = sha256(other)
    h.revert("s2")
    assert sha256(other) == other_digest and sha256(new) == new_digest
    assert_reads(other, {0: 0x60, 1: 0x61}, CLUSTERS)
    h.write({9: 0x99})
    h.check()
    cli.run("verify")

    # s1's frozen image has a detached child (out1): the delete moves no data
    plan = h.delete("s1")
    assert plan["bytes_moved"] == 0
    h.check()
    cli.run("verify")

    cli.run("gc")
    h.refresh()
    for path, reads in [(out1, out1_reads), (out2, out2_reads), (other, {0: 0x60, 1: 0x61})]:
        assert_reads(path, reads, CLUSTERS)
    h.check()
    cli.run("verify")

    cli.run("gc", "--include-detached")
    h.refresh()
    assert not os.path.exists(out1) and not os.path.exists(out2)  # managed: discarded
    assert sha256(other) == other_digest and sha256(new) == new_digest  # the user's: untouched
    assert os.path.exists(base)
    h.check()
    cli.run("verify")
    assert_no_leftovers(cli.dir, h.tops(), kept=[other])


# ---- 3. two VMs on one template ----------------------------------------------------------


def vm_on_template(cli: Cli, name: str, template: str, mark: int) -> History:
    disk = make_image(cli.path(f"{name}.qcow2"), SIZE, {1: mark}, backing=template)
    return History(cli, name, disk, {0: 0x70, 1: mark, 15: 0x7F})


Step = tuple[Any, ...]

STORY_A: list[Step] = [
    ("snapshot", "s0"), ("write", {2: 0xA2}), ("snapshot", "s1"), ("write", {3: 0xA3}),
    ("snapshot", "s2"), ("write", {4: 0xA4, 2: 0xA4}), ("snapshot", "s3"), ("write", {5: 0xA5}),
    ("revert", "s1"), ("write", {6: 0xA6}), ("snapshot", "s4"), ("write", {7: 0xA7, 0: 0xA7}),
    ("delete", "s1", (), 3),  # a managed branch point
    ("delete", "s1", ("--strategy", "pull"), 3),
    ("delete", "s1", ("--branches", "keep"), 0),
    ("delete", "s2", ("--strategy", "commit"), 0),
    ("delete", "s4", ("--strategy", "pull"), 0),
    ("delete", "s0", ("--strategy", "pull"), 3),  # a.qcow2 is the user's: no pull out of it
    ("delete", "s0", ("--strategy", "commit"), 0),  # commits into a.qcow2, never the template
    ("revert", "s3"), ("write", {8: 0xA8}), ("snapshot", "s5"), ("write", {9: 0xA9}),
    ("delete", "s3", ("--strategy", "auto"), 0),
    ("delete", "s5", ("--branches", "pull"), 0),
]
STORY_B: list[Step] = [
    ("snapshot", "s0"), ("write", {2: 0xB2}), ("snapshot", "s1"), ("write", {3: 0xB3, 1: 0xB3}),
    ("snapshot", "s2"), ("write", {4: 0xB4}), ("snapshot", "s3"), ("write", {5: 0xB5}),
    ("revert", "s1"), ("write", {6: 0xB6}), ("snapshot", "s4"), ("write", {7: 0xB7}),
    ("delete", "s1", ("--branches", "pull"), 0),
    ("delete", "s2", ("--strategy", "pull"), 0),
    ("delete", "s4", ("--strategy", "commit"), 0),
    ("revert", "s0"), ("write", {9: 0xB9}),
    ("delete", "s0", ("--strategy", "commit"), 3),  # an adopted branch point: strategy refused
    ("delete", "s0", ("--branches", "pull"), 0),  # adopted: only the metadata goes
    ("delete", "s3", ("--strategy", "auto", "--branches", "keep"), 0),
]


def apply(h: History, step: Step) -> None:
    kind, *args = step
    if kind == "write":
        h.write(args[0])
    elif kind == "snapshot":
        h.snapshot(args[0])
    elif kind == "revert":
        h.revert(args[0])
    else:
        name, options, expect = args
        h.delete(name, *options, expect=expect)


def test_two_vms_on_one_template_never_change_or_delete_it(cli: Cli) -> None:
    template = make_image(cli.path("template.qcow2"), SIZE, {0: 0x70, 15: 0x7F})
    template_digest = sha256(template)
    a = vm_on_template(cli, "a", template, 0xA1)
    b = vm_on_template(cli, "b", template, 0xB1)
    disks = [cli.path("a.qcow2"), cli.path("b.qcow2")]
    for step_a, step_b in zip_longest(STORY_A, STORY_B):
        if step_a is not None:
            apply(a, step_a)
        if step_b is not None:
            apply(b, step_b)
        kinds = {step[0] for step in (step_a, step_b) if step is not None}
        if kinds == {"write"}:
            continue  # guest writes change nothing snapledger did: checked after the next command
        a.check()
        b.check()
        assert sha256(template) == template_digest
        assert all(os.path.exists(d) for d in disks)
        if kinds & {"delete", "revert"}:  # what may merge or delete files
            cli.run("verify")
            assert_no_leftovers(cli.dir, a.tops() + b.tops())
    cli.run("verify")
    assert a.snapshots == {} and b.snapshots == {}
    assert sha256(template) == template_digest


# ---- 4. a crash at every storage call, on real storage -----------------------------------


class Crash(BaseException):
    """The process dies here: nothing below this point runs, no handler records anything."""


class CrashingStorage:
    """The real qemu-img adapter that dies at its k-th mutating call, before or after it."""

    def __init__(self, real: QemuImgStorage, crash_at: int, after: bool) -> None:
        self.real, self.crash_at, self.after = real, crash_at, after
        self.calls: list[str] = []

    def exists(self, path: str) -> bool:
        return self.real.exists(path)

    def check_tools(self) -> None:
        self.real.check_tools()

    def inspect(self, path: str, fmt: str | None = None) -> ImageFacts:
        return self.real.inspect(path, fmt)

    def resolve(self, path: str) -> str:
        return self.real.resolve(path)

    def inspect_chain(
        self, path: str, within: Iterable[str] | None = None, fmt: str | None = None
    ) -> list[ImageFacts]:
        return self.real.inspect_chain(path, within, fmt)

    def sharing(self, path: str) -> Sharing:
        return self.real.sharing(path)

    def scan(self, directories: Iterable[str]) -> Dependants:
        return self.real.scan(directories)

    def repair(self, path: str, *, fmt: str) -> None:
        self.real.repair(path, fmt=fmt)

    def remove_unfinished(self, path: str) -> bool:
        return self.real.remove_unfinished(path)

    def reads_same_over(self, image: str, fmt: str, backing: str, backing_format: str) -> bool:
        return self.real.reads_same_over(image, fmt, backing, backing_format)

    def _mutate(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append(name)
        crash = len(self.calls) == self.crash_at
        if crash and not self.after:
            raise Crash(f"before {name} #{self.crash_at}")
        getattr(self.real, name)(*args, **kwargs)
        if crash:
            raise Crash(f"after {name} #{self.crash_at}")

    def create_overlay(self, path: str, backing: str, backing_format: str, virtual_size: int) -> None:
        self._mutate("create_overlay", path, backing, backing_format, virtual_size)

    def commit(self, top: str, base: str, *, fmt: str) -> None:
        self._mutate("commit", top, base, fmt=fmt)

    def pull(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._mutate("pull", image, new_backing, new_backing_format, fmt=fmt)

    def rebase_unsafe(
        self, image: str, new_backing: str | None, new_backing_format: str | None, *, fmt: str
    ) -> None:
        self._mutate("rebase_unsafe", image, new_backing, new_backing_format, fmt=fmt)

    def delete(self, path: str) -> None:
        self._mutate("delete", path)


def open_service(directory: Path, storage: Any = None) -> Snapledger:
    app = LedgerApplication(f"sqlite:///{directory}/l.sqlite")
    return ledger_service(app, storage or QemuImgStorage())


class ServiceHistory:
    """The two-branch tree of test 1, built through the service; bytes known from the writes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir()
        ledger = open_service(directory)
        base = make_image(directory / "base.qcow2", SIZE, {0: 0x10, 1: 0x10})
        ledger.adopt("vm", {"vda": base})
        self.snapshots: dict[str, dict[int, int]] = {}
        self.present = {0: 0x10, 1: 0x10}
        for name, clusters in [("s0", {1: 0x21, 2: 0x21}), ("s1", {2: 0x22, 3: 0x22}),
                               ("s2", {4: 0x23})]:
            ledger.snapshot("vm", name)
            self.snapshots[name] = dict(self.present)
            self.write(ledger, clusters)
        ledger.revert("vm", "s1")
        self.present = dict(self.snapshots["s1"])
        self.write(ledger, {3: 0x31, 5: 0x31})
        ledger.snapshot("vm", "s3")
        self.snapshots["s3"] = dict(self.present)
        self.write(ledger, {6: 0x32, 0: 0x32})
        ledger.close()

    def write(self, ledger: Snapledger, clusters: Mapping[int, int]) -> None:
        write_clusters(ledger.vm("vm").disks["vda"], clusters)
        self.present.update(clusters)

    def check(self, ledger: Snapledger) -> list[str]:
        vm = ledger.vm("vm")
        assert vm.operation is None
        assert set(vm.snapshots) == set(self.snapshots)
        tops = [vm.disks["vda"]]
        for name, snap in vm.snapshots.items():
            assert_reads(snap.disks["vda"], self.snapshots[name], CLUSTERS)
            tops.append(snap.disks["vda"])
        assert_reads(vm.disks["vda"], self.present, CLUSTERS)
        assert ledger.verify() == []
        assert_no_leftovers(self.dir, tops)
        return sorted(os.path.basename(p) for p in image_files(self.dir))


def deleted(name: str) -> Callable[[ServiceHistory], None]:
    def expect(h: ServiceHistory) -> None:
        del h.snapshots[name]

    return expect


def reverted(name: str) -> Callable[[ServiceHistory], None]:
    def expect(h: ServiceHistory) -> None:
        h.present = dict(h.snapshots[name])

    return expect


def taken(name: str) -> Callable[[ServiceHistory], None]:
    def expect(h: ServiceHistory) -> None:
        h.snapshots[name] = dict(h.present)

    return expect


Operation = tuple[Callable[[Snapledger], object], Callable[[ServiceHistory], None], list[str]]

# what to do; what every snapshot and the present read once it is done (recover rolls forward);
# the mutating storage calls it makes
OPERATIONS: dict[str, Operation] = {
    "delete-commit": (
        lambda s: s.delete("vm", "s3", strategy="commit"), deleted("s3"), ["commit", "delete"]
    ),
    "delete-pull": (
        lambda s: s.delete("vm", "s3", strategy="pull"), deleted("s3"), ["pull", "delete"]
    ),
    # s0 lives in the user's base.qcow2: commit base.s0 into it, re-point both branches
    "delete-commit-into-adopted": (
        lambda s: s.delete("vm", "s0", strategy="commit"),
        deleted("s0"),
        ["commit", "rebase_unsafe", "rebase_unsafe", "delete"],
    ),
    "delete-branch-point-pull": (
        lambda s: s.delete("vm", "s1", branches="pull"), deleted("s1"), ["pull", "pull", "delete"]
    ),
    # creates base.s2-1, deletes the abandoned present base.s3
    "revert": (lambda s: s.revert("vm", "s2"), reverted("s2"), ["create_overlay", "delete"]),
    "snapshot": (lambda s: s.snapshot("vm", "s4"), taken("s4"), ["create_overlay"]),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_crash_at_any_storage_call_is_recovered_without_losing_a_byte(
    tmp_path: Path, operation: str
) -> None:
    act, expect, calls_made = OPERATIONS[operation]
    reference = ServiceHistory(tmp_path / "reference")
    counting = CrashingStorage(QemuImgStorage(), crash_at=0, after=False)
    ledger = open_service(reference.dir, counting)
    act(ledger)
    expect(reference)
    expected_files = reference.check(ledger)
    assert counting.calls == calls_made
    calls = len(calls_made)
    for k in range(1, calls + 1):
        for after in (False, True):
            h = ServiceHistory(tmp_path / f"k{k}-{'after' if after else 'before'}")
            crashing = CrashingStorage(QemuImgStorage(), crash_at=k, after=after)
            with pytest.raises(Crash):
                act(open_service(h.dir, crashing))
            expect(h)
            assert len(crashing.calls) == k
            fresh = open_service(h.dir)
            assert fresh.vm("vm").operation is not None  # the crash left it open
            fresh.recover()
            files = h.check(fresh)
            assert files == expected_files, (k, after, crashing.calls)
            fresh.close()


# ---- 5. kill -9 during a real merge of a few hundred MiB ---------------------------------

REGION = 16 << 20
REGIONS = 20  # 320 MiB virtual


def assert_regions(path: str, expected: Mapping[int, int]) -> None:
    commands = [f"read -P {expected.get(r, 0):#x} {r * REGION} {REGION}" for r in range(REGIONS)]
    out = qemu_io(path, commands, read_only=True)
    assert "Pattern verification failed" not in out, f"{path}: {out}"
    assert out.count("read ") == REGIONS, out


def assert_history_reads(cli: Cli, h: History, expected: Mapping[str, Mapping[int, int]]) -> None:
    """The ledger lists exactly the expected snapshots, each and the present read as written
    (with qemu-io), and `verify` agrees."""
    state = h.refresh()
    assert {s["name"] for s in state["snapshots"]} == set(expected)
    for snap in state["snapshots"]:
        assert_regions(snap["disks"]["vda"], expected[snap["name"]])
    assert_regions(state["disks"]["vda"]["active"], h.present)
    cli.run("verify")


def big_history(cli: Cli) -> History:
    """s0 (user's base) <- s1 (16 MiB) <- s2 (256 MiB more) <- present (16 MiB more)."""
    base = make_image(cli.path("base.qcow2"), REGIONS * REGION)
    qemu_io(base, ["write -P 0x10 0 16M"])
    h = History(cli, "vm", base, {})
    h.present = {0: 0x10}
    h.snapshot("s0")
    qemu_io(h.active(), ["write -P 0x11 16M 16M"])
    h.present[1] = 0x11
    h.snapshot("s1")
    qemu_io(h.active(), ["write -P 0xab 32M 256M"])
    h.present.update({r: 0xAB for r in range(2, 18)})
    h.snapshot("s2")
    qemu_io(h.active(), ["write -P 0x12 288M 16M"])
    h.present[18] = 0x12
    return h


def wait_for_merge(proc: subprocess.Popen[bytes], running: bool, limit: float = 60) -> bool:
    """Wait until a merge runs (or no longer runs) in `proc`'s process group, or `proc` ends."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if bool(merges_in_group(proc.pid)) == running:
            return True
        time.sleep(0.002)
    return False


KILL_TRIALS = [  # (snapshot, strategy, when, what is killed)
    ("s1", "commit", "before", "group"),  # 256 MiB of base.s1 committed into base.s0
    ("s1", "commit", "during", "group"),  # snapledger and its qemu-img die together
    ("s2", "pull", "during", "cli"),  # 256 MiB of base.s1 pulled into the active base.s2;
    # only snapledger dies: its qemu-img goes on, and recover must not run a second one beside it
    ("s2", "pull", "after", "group"),
]


def test_kill_9_at_random_moments_of_a_big_merge_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20240501)
    for trial, (name, strategy, when, whom) in enumerate(KILL_TRIALS):
        directory = tmp_path / f"trial{trial}"
        directory.mkdir()
        cli = Cli(directory)
        h = big_history(cli)
        expected = dict(h.snapshots)
        present = dict(h.present)
        proc = subprocess.Popen(
            [*CLI, "delete", "vm", name, "--strategy", strategy],
            env=cli.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        pgid = proc.pid
        if when == "before":
            time.sleep(rng.uniform(0.05, 0.3))
        elif when == "during":
            assert wait_for_merge(proc, running=True), "the merge was never seen running"
            time.sleep(rng.uniform(0.0, 0.05))  # well inside a 256 MiB merge, even on a fast disk
        else:
            assert wait_for_merge(proc, running=True), "the merge was never seen running"
            assert wait_for_merge(proc, running=False), "the merge never ended"
            time.sleep(rng.uniform(0.0, 0.05))
        print(f"trial {trial} {when}: merge running at kill: {bool(merges_in_group(pgid))}")
        try:
            if whom == "group":
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), proc.returncode
        if when == "during":
            assert proc.returncode == -signal.SIGKILL  # it died with the merge half done

        if whom == "cli":
            # while the orphaned qemu-img holds its image lock, recover can only refuse: a
            # conflict (exit 4) that records nothing and leaves the operation open
            done = subprocess.run(
                [*CLI, "recover"], env=cli.env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0 or (
                done.returncode == 4 and "still holds" in done.stderr
            ), (done.returncode, done.stderr)
            assert not events(cli, "OperationFailed")
            deadline = time.monotonic() + 60
            while merges_in_group(pgid) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not merges_in_group(pgid)
        cli.run("recover")
        state = h.refresh()
        names = {s["name"] for s in state["snapshots"]}
        assert names in (set(expected), set(expected) - {name}), (trial, names)
        for snap in state["snapshots"]:
            assert_regions(snap["disks"]["vda"], expected[snap["name"]])
        assert_regions(state["disks"]["vda"]["active"], present)
        cli.run("verify")
        assert os.path.exists(cli.path("base.qcow2"))
        assert_no_leftovers(directory, h.tops())


DIES_WITH_THE_HEADER_WRITTEN = """
import os, subprocess, sys
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.adapters.compose import ledger_service

class HeaderFirst(QemuImgStorage):
    # what a qemu-img killed late in a safe rebase can leave (QEMU 7.2, seen): the header names
    # the new backing, the data it needs is not mapped (its L2 tables were never written)
    def pull(self, image, new_backing, new_backing_format, *, fmt):
        subprocess.run(["qemu-img", "rebase", "-u", "-f", fmt, "-F", new_backing_format,
                        "-b", new_backing, image], check=True)
        os._exit(9)

ledger_service(LedgerApplication(sys.argv[1]), HeaderFirst()).delete("vm", "s1", strategy="pull")
"""


DIES_IN_THE_CREATE = """
import os, sys
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.adapters.compose import ledger_service

class DiesInTheCreate(QemuImgStorage):
    # killed right after the overlay's file was made (O_EXCL), before qemu-img wrote to it
    def create_overlay(self, path, backing, backing_format, virtual_size):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os._exit(9)

ledger_service(LedgerApplication(sys.argv[1]), DiesInTheCreate()).snapshot("vm", sys.argv[2])
"""


def test_an_overlay_whose_create_was_cut_short_is_made_again(tmp_path: Path) -> None:
    """The process dies with the new overlay an empty file: recover makes it again and finishes
    the snapshot (it used to refuse forever: "exists and is not the overlay this operation
    made"). A file at that path that holds data is never removed."""
    cli = Cli(tmp_path)
    base = make_image(cli.path("base.qcow2"), 16 * CLUSTER, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")

    def dies_in_the_create(name: str) -> str:
        died = subprocess.run([sys.executable, "-c", DIES_IN_THE_CREATE,
                               cli.env["SNAPLEDGER_STORE"], name], capture_output=True, text=True,
                              timeout=300, check=False)
        assert died.returncode == 9, died.stderr
        overlay = cli.path(f"base.{name}")
        assert os.path.getsize(overlay) == 0
        return overlay

    overlay = dies_in_the_create("s9")
    assert "finished snapshot" in cli.run("recover").stdout
    state = cli.json("show", "vm")
    assert [s["name"] for s in state["snapshots"]] == ["s9"]
    assert state["disks"]["vda"]["chain"] == [overlay, base]
    cli.run("verify")
    cli.run("delete", "vm", "s9")
    assert not os.path.exists(overlay)

    overlay = dies_in_the_create("s10")
    os.unlink(overlay)  # someone else's image at that path, with data: left alone
    make_image(overlay, 16 * CLUSTER, {3: 0x77})
    refused = cli.run("recover", expect=1)
    assert "is not the overlay this operation made" in refused.stderr
    assert_reads(overlay, {3: 0x77}, 16)
    # a small raw file of anyone's bytes (no qcow2 magic), and an empty file with a second
    # link: neither is what a create of ours left, so neither is removed
    overlay = dies_in_the_create("s11")
    Path(overlay).write_bytes(b"the user's notes\n")
    assert "is not the overlay" in cli.run("recover", expect=1).stderr
    assert Path(overlay).read_bytes() == b"the user's notes\n"
    overlay = dies_in_the_create("s12")
    os.link(overlay, cli.path("keep"))
    assert "is not the overlay" in cli.run("recover", expect=1).stderr
    assert os.path.exists(overlay) and os.stat(overlay).st_nlink == 2


def test_a_pull_whose_header_was_written_before_its_data_is_redone(tmp_path: Path) -> None:
    """A pull killed when qemu-img had written the new backing into the header but not the
    data: recover sees that the image no longer reads what it read over the old backing (which
    is still there), puts it back over it and pulls again; nothing is lost (a campaign found
    this losing 192 MiB when recover took the header's word and deleted the old backing)."""
    cli = Cli(tmp_path)
    h = big_history(cli)
    expected = dict(h.snapshots)
    del expected["s1"]
    died = subprocess.run([sys.executable, "-c", DIES_WITH_THE_HEADER_WRITTEN,
                           cli.env["SNAPLEDGER_STORE"]], capture_output=True, text=True,
                          timeout=300, check=False)
    assert died.returncode == 9, died.stderr
    assert "finished delete" in cli.run("recover").stdout
    assert_history_reads(cli, h, expected)


def test_recover_leaves_an_operation_whose_process_still_runs_alone(tmp_path: Path) -> None:
    """While a delete merges 256 MiB (its qemu-img stopped mid-way, so that however fast the
    disk the delete is still running), `recover` from another process on this host sees that the
    delete's process still runs: exit 4 saying so, nothing recorded, nothing done; the delete
    then ends normally. (A recover after a kill -9 of that process: the test above.)"""
    cli = Cli(tmp_path)
    h = big_history(cli)
    expected = dict(h.snapshots)
    del expected["s1"]
    delete = subprocess.Popen([*CLI, "delete", "vm", "s1", "--strategy", "commit"], env=cli.env,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    assert wait_for_merge(delete, running=True), "the merge was never seen running"
    merges = merges_in_group(delete.pid)
    for pid in merges:  # held mid-merge, however fast the disk, while recover looks
        os.kill(pid, signal.SIGSTOP)
    try:
        recorded = len(cli.json("log"))
        for _ in range(2):
            refused = cli.run("recover", expect=4)
            assert f"still being carried out by process {delete.pid}" in refused.stderr
            refused = cli.run("recover", "vm", expect=4)
            assert "left alone" in refused.stderr
        assert len(cli.json("log")) == recorded
    finally:
        for pid in merges:
            os.kill(pid, signal.SIGCONT)
    code = delete.wait(timeout=300)
    assert code == 0, (delete.stderr.read() if delete.stderr else b"").decode()
    assert "nothing to recover" in cli.run("recover").stdout
    assert_history_reads(cli, h, expected)


# ---- 6. two processes racing on one store ------------------------------------------------

# Both racers import everything first, then start at the same instant.
RACER = (
    "import sys, time\n"
    "from snapledger.adapters.cli.entry import main\n"
    "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def race(cli: Cli, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    go = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, repr(go), *command], env=cli.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for command in commands
    ]
    done = []
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(list(command), proc.returncode, out, err))
    for result in done:
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("snapledger: error: "), result.stderr
    return done


def race_history(cli: Cli) -> History:
    """s0 <- s1 <- s2 <- present, deleting s1 by commit moves 96 MiB (long enough to overlap)."""
    base = make_image(cli.path("base.qcow2"), 128 << 20)
    h = History(cli, "vm", base, {})
    h.snapshot("s0")
    write_clusters(h.active(), {0: 0x21})
    h.present[0] = 0x21
    h.snapshot("s1")
    qemu_io(h.active(), ["write -P 0xab 32M 96M"])  # clusters 512.. of 64 KiB
    h.snapshot("s2")
    write_clusters(h.active(), {1: 0x23})
    h.present[1] = 0x23
    return h


def events(cli: Cli, kind: str) -> list[Any]:
    return [e for e in cli.json("log", "vm") if e["type"] == f"VirtualMachine.{kind}"]


def check_race_bytes(cli: Cli, h: History) -> None:
    h.refresh()
    h.check()  # the first 16 clusters
    state = h.state
    big = [(s["disks"]["vda"], s["name"] in ("s2", "s9")) for s in state["snapshots"]]
    for path, has_big in [*big, (state["disks"]["vda"]["active"], True)]:
        out = qemu_io(path, [f"read -P {0xAB if has_big else 0:#x} 32M 96M"], read_only=True)
        assert "Pattern verification failed" not in out, (path, out)
    cli.run("verify")
    assert_no_leftovers(cli.dir, h.tops())


def test_two_processes_deleting_one_snapshot_delete_it_once(cli: Cli) -> None:
    h = race_history(cli)
    first, second = race(
        cli, ("delete", "vm", "s1", "--strategy", "commit"), ("delete", "vm", "s1", "--strategy", "commit")
    )
    codes = sorted([first.returncode, second.returncode])
    loser = first if first.returncode else second
    # the loser either overlapped the winner (conflict, 4) or loaded after it had finished (2)
    assert codes in ([0, 4], [0, 2]), (first, second)
    if codes == [0, 2]:
        assert "has no snapshot 's1'" in loser.stderr, loser.stderr
    del h.snapshots["s1"]
    assert len(events(cli, "SnapshotDeleted")) == 1
    assert len([e for e in events(cli, "OperationStarted") if "delete" in e["summary"]]) == 1
    check_race_bytes(cli, h)


def test_a_delete_and_a_snapshot_racing_on_one_vm_each_happen_at_most_once(cli: Cli) -> None:
    h = race_history(cli)
    delete, snapshot = race(
        cli, ("delete", "vm", "s1", "--strategy", "commit"), ("snapshot", "vm", "s9")
    )
    codes = (delete.returncode, snapshot.returncode)
    # either ran strictly after the other (both 0), or one met the other's operation (4)
    assert codes in ((0, 0), (0, 4), (4, 0)), (delete, snapshot)
    if delete.returncode == 0:
        del h.snapshots["s1"]
    if snapshot.returncode == 0:
        h.snapshots["s9"] = dict(h.present)
    assert len(events(cli, "SnapshotDeleted")) == (delete.returncode == 0)
    assert len(events(cli, "SnapshotTaken")) == 3 + (snapshot.returncode == 0)
    assert len(events(cli, "OperationStarted")) == 3 + sum(c == 0 for c in codes)
    check_race_bytes(cli, h)
