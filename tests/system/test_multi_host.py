"""Many hosts on one ledger, for real (issue 12, item 5): every host a set of processes in its own
UTS and mount namespace (its own hostname, its own directory mounted over one local path that
every host uses), all on one PostgreSQL ledger on the run's private server, one plain directory
standing in for NFS (tests/multihost_helpers.py). snapledger learns which host it is from the
hostname alone: these tests never pass --host or SNAPLEDGER_HOST.

What a test expects of a host's files is known from what the test wrote, and read back with
qemu-io on that host; snapledger is asked only which file holds which snapshot.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from multihost_helpers import (
    CLUSTER,
    Host,
    World,
    assert_one_line_error,
    can_make_hosts,
    world,
)
from qemu_helpers import merges_in_group
from store_backends import PostgresBackend

MIB = 1 << 20

pytestmark = pytest.mark.skipif(can_make_hosts() is not None, reason=str(can_make_hosts()))


@pytest.fixture
def hosts(postgres: str) -> Iterator[World]:
    """A fresh ledger (a database of its own) and the directories of a run."""
    with world(PostgresBackend(postgres).new_url()) as made:
        yield made


def entries(host: Host, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = host.json("log", *args)
    return found


# ---- 1. which host a process is: the real hostname --------------------------------------------


def test_a_vm_lives_on_the_host_whose_hostname_adopted_it(hosts: World) -> None:
    assert socket.gethostname() not in ("hv-a", "hv-b")  # the names come from the namespaces
    a, b = hosts.host("hv-a"), hosts.host("hv-b")
    web = a.make_image(a.local("web.qcow2"), 4 * MIB, {0: 0xA1})
    db = b.make_image(b.local("db.qcow2"), 4 * MIB, {0: 0xB1})
    assert a.json("adopt", "web", "--disk", f"vda={web}")["host"] == "hv-a"
    assert b.json("adopt", "db", "--disk", f"vda={db}")["host"] == "hv-b"
    a.run("snapshot", "web", "s1")
    for reader in (a, b):  # reading works from anywhere, and says the same
        assert reader.json("show", "web")["host"] == "hv-a"
        assert reader.json("show", "db")["host"] == "hv-b"
        assert [(r["vm"], r["host"]) for r in reader.json("list")] == [("db", "hv-b"), ("web", "hv-a")]
    assert [r["vm"] for r in a.json("list", "--mine")] == ["web"]
    assert [r["vm"] for r in b.json("list", "--mine")] == ["db"]
    # every event records the host that wrote it
    assert {(e["vm"], e["host"]) for e in entries(b) if e["vm"]} == {("web", "hv-a"), ("db", "hv-b")}
    # each host's local directory is its own: web's file is on A alone, db's on B alone
    assert a.mismatched_clusters(web, {0: 0xA1}, 4) == []
    assert b.mismatched_clusters(db, {0: 0xB1}, 4) == []
    assert not (hosts.local / "web.qcow2").exists() and (a.disk / "web.qcow2").exists()
    assert not (b.disk / "web.qcow2").exists()


# ---- 2. another host's VM: refused, naming its home; nothing recorded, no file touched ---------

REFUSED: tuple[tuple[str, ...], ...] = (
    ("snapshot", "{vm}", "s9"),
    ("delete", "{vm}", "s1"),
    ("delete", "{vm}", "s1", "--dry-run"),
    ("revert", "{vm}", "s1"),
    ("gc", "{vm}"),
    ("gc", "{vm}", "--include-detached"),
    ("recover", "{vm}"),
    ("verify", "{vm}"),
    ("reconcile", "{vm}"),
    ("retire", "{vm}"),
)


def test_another_hosts_changing_commands_are_refused_naming_its_home(hosts: World) -> None:
    """Host B's changing commands on host A's VMs (one on A's local disk, which B can't see,
    and one on the shared directory, which B could write) exit 4 naming host A: nothing is
    recorded and no file of either host changes. Then A still may."""
    a, b = hosts.host("hv-a"), hosts.host("hv-b")
    expected = {"web": {0: 0x11}, "files": {0: 0x22}}
    disks = {"web": a.local("web.qcow2"), "files": a.shared("files.qcow2")}
    for vm, path in disks.items():
        a.make_image(path, 4 * MIB, expected[vm])
        a.run("adopt", vm, "--disk", f"vda={path}")
        a.run("snapshot", vm, "s1")
        a.write_clusters(a.json("show", vm)["disks"]["vda"]["active"], {1: 0x33})
        a.run("snapshot", vm, "s2")
    own = b.make_image(b.local("own.qcow2"), 4 * MIB, {0: 0x44})
    b.run("adopt", "own", "--disk", f"vda={own}")  # so that B's files are more than nothing
    b.run("snapshot", "own", "s1")
    swap_in = b.make_image(b.local("swap.qcow2"), 4 * MIB)

    log = entries(b)
    files = (a.files(), b.files(), hosts.shared_files())
    # every changing command on the shared VM, whose files B sees; the main ones on the local one
    main = [c for c in REFUSED if c[0] != "reconcile" and not {"--dry-run", "--include-detached"} & set(c)]
    commands = {"files": [*REFUSED, ("swap-disk", "{vm}", "vda", swap_in)], "web": main}
    for vm in disks:
        for command in commands[vm]:
            argv = [part.format(vm=vm) for part in command]
            refused = b.run(*argv, expect=4)
            assert f"VM '{vm}' lives on host 'hv-a', not on this host ('hv-b')" in refused.stderr, argv
    assert entries(b) == log, "host B recorded something for host A's VMs"
    assert entries(b)[-1]["position"] == log[-1]["position"]
    assert (a.files(), b.files(), hosts.shared_files()) == files

    # and host A still may: its VMs were left as they were
    for vm in disks:
        state = a.json("show", vm)
        assert state["operation"] is None and [s["name"] for s in state["snapshots"]] == ["s1", "s2"]
        a.assert_reads(state["snapshots"][0]["disks"]["vda"], expected[vm], 4)
        a.run("delete", vm, "s1")
        a.assert_reads(a.json("show", vm)["disks"]["vda"]["active"], {**expected[vm], 1: 0x33}, 4)
    assert a.json("verify")["ok"]


# ---- 3. sweeps stay home ----------------------------------------------------------------------

ALPHA_CLUSTERS = 256  # 16 MiB
BIG = range(16, 208)  # 12 MiB written between s1 and s2: the merge that gets killed


def detached_history(host: Host, vm: str, path: str, pattern: int) -> tuple[dict[str, dict[int, int]], str]:
    """`vm` on `path`: snapshot s1, a write, then the disk swapped for a new image, which leaves
    the overlay written after s1 detached (a leftover for `gc --include-detached`). The
    snapshots' expected contents, and the detached overlay's path."""
    host.make_image(path, 4 * MIB, {0: pattern})
    host.run("adopt", vm, "--disk", f"vda={path}")
    host.run("snapshot", vm, "s1")
    overlay = host.json("show", vm)["disks"]["vda"]["active"]
    host.write_clusters(overlay, {1: pattern + 1})
    swap_in = host.make_image(path.replace(".qcow2", "-new.qcow2"), 4 * MIB, {2: pattern + 2})
    host.run("swap-disk", vm, "vda", swap_in)
    return {"s1": {0: pattern}, "present": {2: pattern + 2}}, overlay


def check_vm(host: Host, vm: str, expected: dict[str, dict[int, int]], clusters: int) -> None:
    state = host.json("show", vm)
    assert state["operation"] is None, state["operation"]
    assert {s["name"] for s in state["snapshots"]} == set(expected) - {"present"}
    for snap in state["snapshots"]:
        host.assert_reads(snap["disks"]["vda"], expected[snap["name"]], clusters)
    host.assert_reads(state["disks"]["vda"]["active"], expected["present"], clusters)


def test_sweeps_without_a_vm_leave_the_other_hosts_vms_alone(hosts: World) -> None:
    """Host A's VM `alpha` (on the shared directory, which B could write) has a delete left open
    by a kill -9 in the middle of its merge, and A's `alpha2` (local) a detached leftover. Host
    B's recover, gc (with and without --include-detached) and verify do their work on B's own VM
    and record nothing for A's, and no file of A changes; A's recover then finishes the delete
    and A's gc collects A's leftover, and every snapshot of A reads as it did."""
    a, b = hosts.host("hv-a"), hosts.host("hv-b")
    alpha = a.make_image(a.shared("alpha.qcow2"), ALPHA_CLUSTERS * 64 * 1024, {0: 0x10})
    a.run("adopt", "alpha", "--disk", f"vda={alpha}")
    a.run("snapshot", "alpha", "s0")
    present = {0: 0x10}
    writes: list[dict[int, int]] = [{1: 0x11}, dict.fromkeys(BIG, 0xAB)]
    expected: dict[str, dict[int, int]] = {"s0": dict(present)}
    for name, clusters in zip(("s1", "s2"), writes, strict=True):
        a.qemu_io(a.json("show", "alpha")["disks"]["vda"]["active"],
                  [f"write -P {p:#x} {c * 64 * 1024} {64 * 1024}" for c, p in clusters.items()])
        present.update(clusters)
        a.run("snapshot", "alpha", name)
        expected[name] = dict(present)
    a.write_clusters(a.json("show", "alpha")["disks"]["vda"]["active"], {2: 0x12})
    present[2] = 0x12
    expected["present"] = dict(present)
    expected2, leftover_a = detached_history(a, "alpha2", a.local("alpha2.qcow2"), 0x20)
    expected_b, leftover_b = detached_history(b, "beta", b.local("beta.qcow2"), 0x30)

    # A's delete of s1 commits 12 MiB into s1's frozen image with qemu-img commit -r 4M, and is
    # killed (with its qemu-img) a second in, while the commit runs. (QEMU 7.2's qemu-img writes
    # the data at once, then waits out the rate before it completes: the kill finds the data
    # written and the commit not finished.)
    [frozen] = [s["disks"]["vda"] for s in a.json("show", "alpha")["snapshots"] if s["name"] == "s1"]
    size_before = os.path.getsize(frozen)
    delete = a.popen("delete", "alpha", "s1", "--strategy", "commit", slow_commit="4M")
    deadline = time.monotonic() + 60
    while not merges_in_group(delete.pid):
        assert delete.poll() is None, ("the delete ended before its merge was seen", delete.communicate())
        assert time.monotonic() < deadline, "the merge was never seen running"
        time.sleep(0.01)
    time.sleep(1.0)
    assert merges_in_group(delete.pid), "the merge ended before the kill"
    a.kill(delete)
    assert delete.returncode == -signal.SIGKILL
    grown = os.path.getsize(frozen) - size_before
    assert grown >= MIB, f"killed before the commit wrote anything: {grown} B"
    assert a.json("show", "alpha")["operation"]["kind"] == "delete"  # left open

    a_vms = {"alpha", "alpha2"}
    log = entries(b)
    a_files, shared_files = a.files(), hosts.shared_files()
    assert "alpha2-new.qcow2" in a_files  # (the local files seen are A's)
    assert b.json("recover")["finished"] == []
    assert b.json("gc") == []
    collected = b.json("gc", "--include-detached")
    assert [plan["kind"] for plan in collected] == ["gc"]
    assert not b.outside(leftover_b).exists(), "B's gc did not collect B's own leftover"
    report = b.json("verify")
    assert report["ok"], report
    new = entries(b)[len(log):]
    assert new, "B's gc recorded nothing at all"
    assert all(e["host"] == "hv-b" for e in new)
    assert not [e for e in new if e["vm"] in a_vms], "host B recorded events for host A's VMs"
    assert not [e for e in new if e["image"] and "alpha" in e["image"]], "... or for A's images"
    assert entries(b)[: len(log)] == log
    assert (a.files(), hosts.shared_files()) == (a_files, shared_files), "host B touched A's files"
    assert b.json("show", "alpha")["operation"]["kind"] == "delete"  # still open: B left it

    # A finishes its own work
    finished = a.json("recover")["finished"]
    assert len(finished) == 1 and finished[0].startswith("alpha: finished delete"), finished
    assert a.outside(leftover_a).exists()
    a.run("gc", "--include-detached")
    assert not a.outside(leftover_a).exists(), "A's gc did not collect A's leftover"
    del expected["s1"]
    check_vm(a, "alpha", expected, ALPHA_CLUSTERS)
    check_vm(a, "alpha2", expected2, 64)
    check_vm(b, "beta", expected_b, 64)
    for host in (a, b):
        assert host.json("verify")["ok"]
    everything = entries(a)
    assert not [e for e in everything if e["vm"] in a_vms and e["host"] != "hv-a"]
    assert not [e for e in everything if e["vm"] == "beta" and e["host"] != "hv-b"]


# ---- 4. two hosts, three processes each, snapshots at once ------------------------------------

SNAPSHOTS = 10
RETRIES = 30


class Worker(threading.Thread):
    """One process after another on `host`, on its own VM: adopt it, then write a cluster and
    take a snapshot, SNAPSHOTS times. A conflict (exit 4: another writer won a race) is retried
    and counted; anything else but success fails the worker."""

    def __init__(self, host: Host, vm: str) -> None:
        super().__init__(name=f"{host.name}/{vm}")
        self.host, self.vm = host, vm
        self.conflicts: list[str] = []
        self.error: BaseException | None = None

    def attempt(self, *args: str) -> Any:
        for _ in range(RETRIES):
            done = self.host.snapledger(*args, "--json")
            if done.returncode == 0:
                return json.loads(done.stdout)
            assert done.returncode == 4, (self.name, args, done.returncode, done.stderr)
            assert_one_line_error(done.stderr)
            self.conflicts.append(done.stderr.strip())
        raise AssertionError(f"{self.name}: {args} lost {RETRIES} races: {self.conflicts[-3:]}")

    def run(self) -> None:
        try:
            path = self.host.make_image(self.host.local(f"{self.vm}.qcow2"), 4 * MIB)
            active = self.attempt("adopt", self.vm, "--disk", f"vda={path}")["disks"]["vda"]["active"]
            for i in range(1, SNAPSHOTS + 1):
                self.host.write_clusters(active, {i: i})
                plan = self.attempt("snapshot", self.vm, f"s{i:02}")
                [active] = [s["path"] for s in plan["steps"] if s["action"] == "create-overlay"]
        except BaseException as error:  # reported by the test's thread
            self.error = error


def test_two_hosts_three_processes_each_snapshotting_at_once_lose_nothing(hosts: World) -> None:
    """Six writers on one ledger at once (three on each host, each on a VM of its own): every
    snapshot is recorded once and reads what its VM held when it was taken, the ledger's
    positions run 1..N without a gap, and the hash chain is whole. Conflicts are retried."""
    a, b = hosts.host("hv-a"), hosts.host("hv-b")
    workers = [Worker(host, f"{host.name[-1]}{n}") for host in (a, b) for n in range(1, 4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert not worker.is_alive(), f"{worker.name} never finished"
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise errors[0]
    conflicts = sum(len(w.conflicts) for w in workers)
    print(f"conflicts retried: {conflicts}", *{c for w in workers for c in w.conflicts}, sep="\n")

    log = entries(a)
    assert [e["position"] for e in log] == list(range(1, len(log) + 1)), "the positions have a gap"
    taken = [(e["vm"], e["host"]) for e in log if e["type"] == "VirtualMachine.SnapshotTaken"]
    assert sorted(taken) == sorted((w.vm, w.host.name) for w in workers for _ in range(SNAPSHOTS))
    for host in (a, b):
        report = host.json("verify")
        assert report["ok"], report
        assert report["head"]["position"] == len(log)
    chains: dict[str, set[str]] = {a.name: set(), b.name: set()}
    for worker in workers:
        state = worker.host.json("show", worker.vm)
        assert state["host"] == worker.host.name and state["operation"] is None
        names = [f"s{i:02}" for i in range(1, SNAPSHOTS + 1)]
        assert [s["name"] for s in state["snapshots"]] == names
        assert [s["parent"] for s in state["snapshots"]] == [None, *names[:-1]]
        for i, snap in enumerate(state["snapshots"]):  # s01 holds cluster 1 ..., not what followed
            worker.host.assert_reads(snap["disks"]["vda"], {c: c for c in range(1, i + 2)}, SNAPSHOTS + 2)
        chain = state["disks"]["vda"]["chain"]
        assert worker.host.chain(chain[0]) == chain and len(chain) == SNAPSHOTS + 1
        chains[worker.host.name] |= {os.path.basename(path) for path in chain}
    for host in (a, b):  # no file left over by a lost race
        assert set(host.files()) == chains[host.name]


# ---- 5. one VM's history on one host, what each snapshot must read ---------------------------


class History:
    """VM `vm` (disk vda) on `host`, driven through the CLI on that host. What each snapshot and
    the present must read is known from the test's own writes (cluster -> pattern byte); which
    file holds a snapshot is asked of `show`. `retry`: a command that loses a race to another
    writer (exit 4, nothing done) is run again, up to RETRIES times; the races are counted.
    `unit`: the bytes of one cluster of the expected contents (64 KiB unless given)."""

    def __init__(self, host: Host, vm: str, present: dict[int, int], *, retry: bool = False,
                 unit: int = CLUSTER) -> None:
        self.host, self.vm, self.retry, self.unit = host, vm, retry, unit
        self.present = dict(present)
        self.snapshots: dict[str, dict[int, int]] = {}
        self.races: list[str] = []

    def cli(self, *args: str) -> Any:
        """A changing command on the VM's host, its JSON document."""
        for _ in range(RETRIES if self.retry else 1):
            done = self.host.snapledger(*args, "--json")
            if done.returncode == 0:
                return json.loads(done.stdout)
            assert self.retry and done.returncode == 4, (self.host.name, args, done.returncode, done.stderr)
            assert_one_line_error(done.stderr)
            self.races.append(done.stderr.strip())
        raise AssertionError(f"{self.host.name}: {args} lost {RETRIES} races: {self.races[-3:]}")

    def adopt(self, disk: str, *options: str) -> None:
        self.cli("adopt", self.vm, "--disk", f"vda={disk}", *options)

    def state(self) -> Any:
        return self.host.json("show", self.vm)

    def write(self, clusters: dict[int, int]) -> None:
        self.host.write_clusters(self.state()["disks"]["vda"]["active"], clusters, self.unit)
        self.present.update(clusters)

    def snapshot(self, name: str) -> None:
        self.cli("snapshot", self.vm, name)
        self.snapshots[name] = dict(self.present)

    def revert(self, name: str) -> None:
        self.cli("revert", self.vm, name)
        self.present = dict(self.snapshots[name])

    def delete(self, name: str, *options: str) -> Any:
        plan = self.cli("delete", self.vm, name, *options)
        del self.snapshots[name]
        return plan

    def frozen(self, name: str) -> str:
        [path] = [s["disks"]["vda"] for s in self.state()["snapshots"] if s["name"] == name]
        return str(path)

    def check(self, clusters: int) -> None:
        """The ledger lists exactly the expected snapshots, no operation is open, and each
        snapshot and the present read (on the VM's host) what was written."""
        state = self.state()
        assert state["operation"] is None, state["operation"]
        assert {s["name"] for s in state["snapshots"]} == set(self.snapshots), state["snapshots"]
        for snap in state["snapshots"]:
            self.host.assert_reads(snap["disks"]["vda"], self.snapshots[snap["name"]], clusters, self.unit)
        self.host.assert_reads(state["disks"]["vda"]["active"], self.present, clusters, self.unit)

    def tops(self) -> list[str]:
        """The images every snapshot and the present read through."""
        state = self.state()
        return [state["disks"]["vda"]["active"], *(s["disks"]["vda"] for s in state["snapshots"])]

    def files(self) -> set[str]:
        """Every file of the chains of the snapshots and the present, as the host's qemu-img
        sees them."""
        return {path for top in self.tops() for path in self.host.chain(top)}


# ---- 6. the same local path on two hosts: two files, two images ------------------------------


def test_two_hosts_keep_their_own_file_at_the_same_local_path(hosts: World) -> None:
    """Hosts A and B both have `local/r0.qcow2` (different contents) and each adopts a VM over
    its own (B used to be refused: "used by VM ..."). Their overlays get the same paths too. Each
    takes snapshots and deletes them, by commit and by pull, and each keeps its own bytes: every
    snapshot reads what its host wrote, and no command of one host changes a file of the other.
    A's gc then collects A's detached overlay, a path at which B's active image lives, and
    leaves B's alone; verify is clean on both; neither host's explain of the path names the
    other's VM."""
    a, b = hosts.host("hv-a"), hosts.host("hv-b")
    left, right = History(a, "left", {0: 0xA0}), History(b, "right", {0: 0xB0})
    r0 = a.local("r0.qcow2")
    assert r0 == b.local("r0.qcow2")
    a.make_image(r0, 4 * MIB, left.present)
    b.make_image(r0, 4 * MIB, right.present)
    left.adopt(r0)
    right.adopt(r0)  # "used by VM left" before storage identity

    def each(act: str, *args: str) -> None:
        """A then B do the same, and each leaves the other's files as they were."""
        for history, other in ((left, b), (right, a)):
            before = other.files()
            getattr(history, act)(*args)
            assert other.files() == before, f"{history.host.name}'s {act} {args} changed {other.name}'s files"

    for n in (1, 2, 3):
        each("snapshot", f"s{n}")
        left.write({n: 0xA0 + n})
        right.write({n: 0xB0 + n})
    each("snapshot", "s4")
    for history in (left, right):
        history.check(16)
    # the same overlays at the same paths on both hosts
    assert left.files() == right.files() and len(left.files()) == 5
    assert set(a.files()) == set(b.files())

    # deletes: A commits where B pulls and the other way round, so that the same path is
    # merged into on one host and pulled from (and deleted) on the other; s1, on the adopted
    # r0.qcow2 (which has no backing to pull onto), both commit into their own r0.qcow2
    deletes = (("s2", ("commit", "pull")), ("s3", ("pull", "commit")), ("s1", ("commit", "commit")))
    for name, (mine, theirs) in deletes:
        for history, strategy, other in ((left, mine, b), (right, theirs, a)):
            before = other.files()
            plan = history.delete(name, "--strategy", strategy)
            assert strategy in {step["action"] for step in plan["steps"]}, plan
            assert other.files() == before, f"{history.host.name}'s delete of {name} changed {other.name}'s files"
        left.check(16)
        right.check(16)
    for history in (left, right):
        assert set(history.host.files()) == {os.path.basename(p) for p in history.files()}

    # A's disk swapped for a new image: its active overlay (at the path of B's active image)
    # is left detached, for gc --include-detached on A to collect
    leftover = left.state()["disks"]["vda"]["active"]
    assert leftover == right.state()["disks"]["vda"]["active"]
    swap_in = a.make_image(a.local("swap.qcow2"), 4 * MIB, {5: 0xA5})
    a.run("swap-disk", "left", "vda", swap_in)
    left.present = {5: 0xA5}

    log = entries(a)
    a_files, b_files = a.files(), b.files()
    assert b.json("gc") == [] and b.json("gc", "--include-detached") == []  # B has nothing to collect
    assert b.json("verify")["ok"]
    assert (a.files(), b.files()) == (a_files, b_files), "B's gc or verify changed a file"
    collected = a.json("gc", "--include-detached")
    assert [[s["path"] for s in plan["steps"] if s["action"] == "delete-file"] for plan in collected] == [[leftover]]
    assert not a.outside(leftover).exists()
    assert b.files() == b_files, "A's gc changed B's files"
    assert a.json("verify")["ok"] and b.json("verify")["ok"]
    new = entries(a)[len(log):]
    assert new and all(e["host"] == "hv-a" and e["vm"] in ("left", None) for e in new), new
    assert not [e for e in new if e["image"] and e["vm"] == "right"]
    left.check(16)
    right.check(16)

    # each host's explain of r0.qcow2, for either VM, names that VM alone
    for reader in (a, b):
        for vm, other in (("left", "right"), ("right", "left")):
            told = reader.json("explain", vm, r0)
            assert told["vms"] == [vm] and told["owner"] == "adopted", (reader.name, told)
            assert other not in json.dumps(told), (reader.name, vm, told)


# ---- 7. a template on shared storage, used from two hosts at once -----------------------------

TEMPLATE = {0: 0x70, 7: 0x77}  # clusters of shared/tmpl.qcow2


class TemplateUser(threading.Thread):
    """Host `history.host`'s VM over `local/<vm>.qcow2 -> shared/tmpl.qcow2`: snapshots, a
    revert that makes s2 a branch point, then deletes (the branch point with --branches pull,
    by commit, by pull), while the other host does the same. `start_line` is passed by both
    threads before their deletes, so that the deletes run at the same time."""

    def __init__(self, host: Host, template: str, start_line: threading.Barrier) -> None:
        super().__init__(name=host.name)
        self.mark = 0xA0 if host.name == "hv-a" else 0xB0  # the host's pattern bytes
        self.history = History(host, f"{host.name[-1]}vm", {**TEMPLATE, 5: self.mark + 5}, retry=True)
        self.template, self.start_line = template, start_line
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.cycle()
        except BaseException as error:  # reported by the test's thread
            self.error = error
            self.start_line.abort()

    def cycle(self) -> None:
        h, host, mark = self.history, self.history.host, self.mark
        disk = host.make_image(host.local(f"{h.vm}.qcow2"), 4 * MIB, {5: mark + 5}, backing=self.template)
        h.adopt(disk, "--shared", str(host.world.shared))
        self.start_line.wait()
        h.snapshot("s1")
        h.write({1: mark + 1})
        h.snapshot("s2")
        h.write({2: mark + 2})
        h.snapshot("s3")
        h.revert("s2")
        h.write({3: mark + 3})
        h.snapshot("s4")  # s2's image now has two children: s3's and s4's
        self.start_line.wait()
        plan = h.delete("s2", "--branches", "pull")
        pulled = [s["image"] for s in plan["steps"] if s["action"] == "pull"]
        assert len(pulled) == 2, plan  # into both children of the branch point
        h.delete("s3")
        plan = h.delete("s1", "--strategy", "commit")  # into the VM's own disk, above the template
        assert [s["base"] for s in plan["steps"] if s["action"] == "commit"] == [h.frozen("s4")], plan
        h.write({4: mark + 4})
        h.snapshot("s5")
        h.write({6: mark + 6})
        h.snapshot("s6")
        plan = h.delete("s5", "--strategy", "pull")
        assert [s["action"] for s in plan["steps"]].count("pull") == 1, plan
        h.check(8)


def test_a_shared_template_stays_as_it_is_while_two_hosts_delete_snapshots_on_it(hosts: World) -> None:
    """`shared/tmpl.qcow2` is below a VM of host A and a VM of host B (each `local/<vm>.qcow2 ->
    shared/tmpl.qcow2`, adopted with --shared). Both hosts snapshot, revert and delete at the
    same time (deletes by commit, by pull, and of a branch point with --branches pull, whose
    children are then rebased onto the template). The template keeps its checksum and mtime,
    and no file appears in the shared directory; every snapshot reads what its host wrote;
    explain on either host calls the template read-only, used by both VMs; gc from either host
    keeps it; and after A retires its VM, B's VM still keeps it."""
    a, b = hosts.host("hv-a"), hosts.host("hv-b")
    template = a.make_image(a.shared("tmpl.qcow2"), 4 * MIB, TEMPLATE)
    shared_before = hosts.shared_files()
    start_line = threading.Barrier(2, timeout=300)
    users = [TemplateUser(host, template, start_line) for host in (a, b)]
    for user in users:
        user.start()
    for user in users:
        user.join(timeout=600)
        assert not user.is_alive(), f"{user.name} never finished"
    errors = [u.error for u in users if u.error is not None and not isinstance(u.error, threading.BrokenBarrierError)]
    if errors:
        raise errors[0]
    print("races retried:", *{r for u in users for r in u.history.races}, sep="\n")
    assert hosts.shared_files() == shared_before, "the template changed, or a file appeared beside it"
    for user in users:  # each chain reaches the template; the branch point's children rest on it
        h = user.history
        assert all(user.history.host.chain(top)[-1] == template for top in h.tops())
        assert template in h.files()
        assert {os.path.basename(p) for p in h.files() if p != template} == set(h.host.files())

    def read_only_for(reader: Host, vm: str, vms: list[str]) -> None:
        told = reader.json("explain", vm, template)
        assert told["owner"] == "read-only" and told["vms"] == vms, (reader.name, vm, told)
        assert not told["may_write"] and not told["may_delete"], (reader.name, vm, told)
        assert told["freed_by"] == [] and told["nothing_frees_it"], (reader.name, vm, told)
        assert any(all(v in why for v in vms) for why in told["read_only_because"]) or len(vms) == 1, told

    for reader in (a, b):
        for vm in ("avm", "bvm"):
            read_only_for(reader, vm, ["avm", "bvm"])
    for host in (a, b, a, b):
        host.json("gc", "--include-detached")
        assert hosts.shared_files() == shared_before, f"{host.name}'s gc touched the template"
        assert host.json("verify")["ok"]

    # A retires its VM: B's still rests on the template, which stays read-only and kept
    left_behind = a.json("retire", "avm")["left_behind"]
    assert template not in left_behind
    for reader in (a, b):
        read_only_for(reader, "bvm", ["bvm"])
        assert reader.json("gc", "--include-detached") == []
        assert hosts.shared_files() == shared_before, f"{reader.name}'s gc touched the template"
    users[1].history.check(8)
    assert b.json("verify")["ok"]


# ---- 8. a host killed in the middle of a big merge on shared storage: take-over, recover ------

REGION = 16 * MIB
REGIONS = 20  # 320 MiB virtual
BIG_WRITE = range(2, 18)  # 256 MiB written between s1 and s2: what deleting s1 commits


def test_a_host_killed_in_a_big_merge_on_shared_storage_is_taken_over_and_recovered(hosts: World) -> None:
    """Host A's VM lives in the shared directory (disk and overlays): s0 <- s1 <- s2 (256 MiB
    written between s1 and s2) <- present. A's delete of s1 commits those 256 MiB into s1's
    image and is killed -9 (its whole process group, qemu-img included) while qemu-img runs.
    Host B may not recover it (exit 4, A's VM; nothing recorded) until it takes the VM over
    (`move --to hv-b --take-over`); B's recover then finishes the delete. Every remaining
    snapshot and the present read, from B, as written, region by region; verify is clean; no
    file is left in the shared directory beyond the chains; and A's changing commands now exit
    4 naming B."""
    a, b = hosts.host("hv-a"), hosts.host("hv-b")
    h = History(a, "big", {0: 0x10}, unit=REGION)
    base = a.make_image(a.shared("big.qcow2"), REGIONS * REGION)
    a.write_clusters(base, h.present, REGION)
    h.adopt(base, "--shared", str(hosts.shared))
    h.snapshot("s0")
    h.write({1: 0x11})
    h.snapshot("s1")
    h.write(dict.fromkeys(BIG_WRITE, 0xAB))
    h.snapshot("s2")
    h.write({18: 0x12})
    frozen = h.frozen("s1")
    size_before = os.path.getsize(frozen)

    # the commit is rate-limited (qemu-img commit -r): QEMU 7.2 copies at full speed, then
    # waits out the rate before it completes, so qemu-img still runs whenever the kill comes;
    # it comes once a good part of the 256 MiB is in s1's image, normally while still copying
    delete = a.popen("delete", "big", "s1", "--strategy", "commit", slow_commit="32M")
    deadline = time.monotonic() + 60
    while not merges_in_group(delete.pid) or os.path.getsize(frozen) - size_before < 32 * MIB:
        assert delete.poll() is None, ("the delete ended before the kill", delete.communicate())
        assert time.monotonic() < deadline, "the merge was never seen writing"
        time.sleep(0.001)
    assert merges_in_group(delete.pid), "the merge ended before the kill"
    a.kill(delete)
    assert delete.returncode == -signal.SIGKILL
    print(f"killed with {(os.path.getsize(frozen) - size_before) >> 20} MiB of 256 committed")
    assert not merges_in_group(delete.pid)
    assert h.state()["operation"]["kind"] == "delete"  # left open by the dead host

    # B may not finish A's work while the VM is A's, and records nothing trying
    log = entries(b)
    refused = b.run("recover", "big", expect=4)
    assert "VM 'big' lives on host 'hv-a', not on this host ('hv-b')" in refused.stderr
    assert b.json("recover")["finished"] == []  # B's sweep: none of B's VMs
    b.run("move", "big", "--to", "hv-b", expect=4)  # only A, its home, moves it without --take-over
    assert entries(b) == log, "host B recorded something for host A's VM"
    assert os.path.exists(frozen) and h.state()["operation"]["kind"] == "delete"

    moved = b.json("move", "big", "--to", "hv-b", "--take-over")
    assert moved["host"] == "hv-b" and moved["operation"]["kind"] == "delete"
    h.host = b
    finished = b.json("recover", "big")["finished"]
    assert len(finished) == 1 and finished[0].startswith("big: finished delete"), finished
    del h.snapshots["s1"]
    h.check(REGIONS)  # qemu-io on B, region by region
    assert b.json("verify", "big")["ok"] and b.json("verify")["ok"]
    assert set(hosts.shared_files()) == {os.path.basename(p) for p in h.files()}, "a file left over"
    assert b.json("gc", "big", "--include-detached") == []  # nothing the recover left to collect
    after = entries(b)[len(log):]
    assert after and all(e["host"] == "hv-b" for e in after), after

    # A (back, or never fenced) changes nothing of B's VM now, and records nothing trying
    log = entries(a)
    files = hosts.shared_files()
    for command in (("snapshot", "big", "s9"), ("delete", "big", "s2"), ("recover", "big"),
                    ("gc", "big"), ("verify", "big"), ("move", "big", "--to", "hv-a")):
        refused = a.run(*command, expect=4)
        assert "VM 'big' lives on host 'hv-b', not on this host ('hv-a')" in refused.stderr, command
    assert a.json("recover")["finished"] == [] and a.json("gc") == []
    assert entries(a) == log, "host A recorded something for the VM it lost"
    assert hosts.shared_files() == files
