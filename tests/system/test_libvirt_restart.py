"""Issue 5: a live merge interrupted for real, then `snapledger recover`.

A tiny running domain (tests/libvirt_helpers.py) merges a snapshot by a libvirt block job, slowed
down with the test knob SNAPLEDGER_TEST_JOB_BANDWIDTH (a bandwidth limit for every block job
snapledger starts, docs/libvirt.md) so that it is still running when the test strikes:

- libvirtd is killed (-9) and started again while the job runs (QEMU and its job run on), and the
  snapledger process either fails on its own or is killed -9 too;
- or only the snapledger process is killed -9.

Then `recover` must finish the operation from what libvirt and the disks say: `verify` is clean,
every frozen image reads what its snapshot saw (`qemu-io -r -U`), the running disk reads the
present (HMP qemu-io, then the files once the domain is shut off), nothing was merged twice, and
the domain runs on the expected image (`virsh domblklist`).

Every wait polls with a deadline; libvirtd is running again after each test (the `libvirtd`
fixture), since the other tests need it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import libvirt
import libvirt_helpers
import pytest
from cli_helpers import CLI, Cli
from libvirt_helpers import URI, Domains
from qemu_helpers import make_image, qemu_io

from snapledger.adapters.libvirt.hypervisor import TEST_JOB_BANDWIDTH_ENV

MIB = 1 << 20
SIZE = 16 * MIB  # the disk's virtual size
BULK = (1 * MIB, 6 * MIB)  # offset, length: what the guest writes before the merge (6 s at 1 MiB/s)
BANDWIDTH = 1 * MIB  # bytes per second for the interrupted job
DEADLINE = 60.0  # seconds, for anything the test waits for (never reached when all is well)

libvirt_vms = libvirt_helpers.libvirt_vms  # the fixture

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], deadline: float = DEADLINE) -> T:
    """Poll `probe` until it returns something true; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    pause = 0.02
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


# ---- libvirtd ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def libvirtd_pids() -> list[int]:
    done = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True, check=False)
    return [pid for pid in map(int, done.stdout.split()) if _alive(pid)]


def libvirtd_answers() -> bool:
    try:
        done = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, timeout=10,
                              check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def start_libvirtd() -> None:
    subprocess.run(["libvirtd", "-d"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=DEADLINE, check=True)
    wait_for("libvirtd to answer", libvirtd_answers)


def restart_libvirtd(vms: Domains) -> None:
    """Kill libvirtd (-9, as a crash would) and start it again; QEMU runs on meanwhile."""
    pids = libvirtd_pids()
    assert pids, "libvirtd is not running"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for("libvirtd to die", lambda: not any(_alive(pid) for pid in pids))
    start_libvirtd()
    vms.reconnect()


@pytest.fixture
def libvirtd(libvirt_vms: Domains) -> Iterator[Domains]:
    """libvirt_vms, with libvirtd running and answering again afterwards whatever happened."""
    try:
        yield libvirt_vms
    finally:
        if not libvirtd_answers():
            if not libvirtd_pids():
                start_libvirtd()
            wait_for("libvirtd to answer", libvirtd_answers)
            libvirt_vms.reconnect()


# ---- snapledger in the background ---------------------------------------------------------


class Background:
    """A snapledger command running while the test strikes; killed at the end if need be."""

    def __init__(self, cli: Cli, *args: str, bandwidth: int = BANDWIDTH) -> None:
        self.args = args
        self.out = open(cli.dir / "background.out", "w+")  # noqa: SIM115 (closed in wait/kill)
        env = {**cli.env, TEST_JOB_BANDWIDTH_ENV: str(bandwidth)}
        self.proc = subprocess.Popen([*CLI, *args], stdout=self.out, stderr=subprocess.STDOUT,
                                     env=env, text=True)

    def wait(self) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.args} did not end within {DEADLINE:g} s") from None
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return code, text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    try:
        yield started
    finally:
        for job in started:
            job.kill()
            job.out.close()


# ---- the domain and what its images read ---------------------------------------------------

CELL = 64 * 1024  # one cluster
Regions = list[tuple[int, int, int]]  # offset, length, pattern (0: never written)
ACTIVE_COMMIT = libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT
COMMIT = libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT
PULL = libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL


def _three_snapshots(cli: Cli, vms: Domains, name: str) -> None:
    """s1 freezes the disk, s2 vda.s1 (0x11 at 8 MiB), s3 vda.s2 (0x22 over BULK); the guest
    then writes 0x33 at 12 MiB into vda.s3."""
    cli.run("snapshot", name, "s1")
    vms.write(name, 0x11, 8 * MIB)
    cli.run("snapshot", name, "s2")
    vms.write(name, 0x22, *BULK)
    cli.run("snapshot", name, "s3")
    vms.write(name, 0x33, 12 * MIB)


def _setup(tmp_path: Path, vms: Domains) -> tuple[Cli, str, str]:
    """A running domain on a 16 MiB disk whose first cluster reads 0x01, adopted."""
    base = make_image(vms.path("vda.qcow2"), SIZE, {0: 0x01})
    name = vms.new({"vda": base})
    cli = Cli(tmp_path)
    cli.run("adopt", name, "--libvirt")
    return cli, name, base


def content(written: dict[int, int], bulk: int | None = None, below: Regions | None = None) -> Regions:
    """The whole disk as regions: `below` (default: the adopted disk, 0x01 in its first
    cluster, zeros elsewhere), then `bulk` over BULK, then `written` clusters (offset ->
    pattern) on top."""
    cells = dict.fromkeys(range(0, SIZE, CELL), 0)
    cells[0] = 0x01
    for offset, length, pattern in below or []:
        cells.update(dict.fromkeys(range(offset, offset + length, CELL), pattern))
    if bulk is not None:
        cells.update(dict.fromkeys(range(BULK[0], BULK[0] + BULK[1], CELL), bulk))
    cells.update(written)
    out: Regions = []
    for at, pattern in sorted(cells.items()):
        if out and out[-1][2] == pattern and out[-1][0] + out[-1][1] == at:
            out[-1] = (out[-1][0], out[-1][1] + CELL, pattern)
        else:
            out.append((at, CELL, pattern))
    return out


def assert_file_reads(path: str, regions: Regions) -> None:
    """An image (frozen, or the domain's once shut off) reads exactly `regions` through its
    chain: qemu-io -r -U."""
    out = qemu_io(path, [f"read -P {p:#x} {o} {n}" for o, n, p in regions], read_only=True)
    assert "Pattern verification failed" not in out, f"{path}: {out}"
    assert out.count("read ") == len(regions), out


def assert_running_reads(vms: Domains, name: str, regions: Regions) -> None:
    """The running disk reads exactly `regions`, as the guest sees it (HMP qemu-io)."""
    bad = [(o, n, p) for o, n, p in regions if not vms.reads(name, p, o, n)]
    assert not bad, f"{name}'s running disk does not read {bad}"


def _job(vms: Domains, name: str) -> dict[str, int]:
    info: dict[str, int] = vms.domain(name).blockJobInfo("vda", 0)
    return info


def _running_job(vms: Domains, name: str, kind: int) -> None:
    """Wait until the disk's block job runs; it must be of `kind` and not done yet."""
    info = wait_for("the block job to start", lambda: _job(vms, name))
    assert info["type"] == kind, info
    assert info["cur"] < info["end"], info


def _domblklist(name: str) -> list[str]:
    done = subprocess.run(["virsh", "-c", URI, "domblklist", name], capture_output=True,
                          text=True, timeout=DEADLINE, check=True)
    return [line.split()[1] for line in done.stdout.splitlines()[2:] if line.strip()]


def _backing(path: str) -> str | None:
    done = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True,
                          text=True, timeout=DEADLINE, check=True)
    backing = json.loads(done.stdout).get("backing-filename")
    return str(backing) if backing is not None else None


def _stamp(path: str) -> tuple[int, int, int]:
    seen = os.stat(path)
    return seen.st_ino, seen.st_size, seen.st_mtime_ns


def _operation(cli: Cli, name: str) -> dict:  # type: ignore[type-arg]
    op = cli.json("show", name)["operation"]
    assert op is not None, "the operation was not left open"
    return op  # type: ignore[no-any-return]


def _steps_done(cli: Cli, name: str, op_id: str) -> list[int]:
    """The indexes of the operation's steps recorded as done, in order."""
    out = []
    for line in cli.run("export", name).stdout.splitlines()[1:]:
        event = json.loads(line)
        state = json.loads(event["state"])
        if event["topic"].endswith("StorageStepCompleted") and state.get("op_id") == op_id:
            out.append(state["index"])
    return out


def _check_finished(cli: Cli, vms: Domains, name: str, op: dict, *,  # type: ignore[type-arg]
                    chain: list[str], frozen: dict[str, tuple[str, Regions]],
                    present: Regions, gone: list[str]) -> None:
    """After recover: the operation is closed with each step done once; no block job is left;
    the domain runs on `chain` (active first; its persistent definition too); each snapshot of
    `frozen` (name -> image, what it reads) is held by that image and reads it; the running
    disk reads `present`; the merged images are deleted; verify is clean. Then the guest writes
    on, and the shut-off disk reads it all."""
    shown = cli.json("show", name)
    assert shown["operation"] is None
    assert _steps_done(cli, name, op["id"]) == list(range(op["steps"]))  # nothing done twice
    assert vms.running(name) and not _job(vms, name)
    assert _domblklist(name) == [chain[0]]
    assert vms.sources(name)["vda"] == chain
    assert vms.sources(name, inactive=True)["vda"][0] == chain[0]
    assert shown["disks"]["vda"]["active"] == chain[0]
    assert {s["name"]: s["disks"]["vda"] for s in shown["snapshots"]} == {
        snap: path for snap, (path, _) in frozen.items()
    }
    for path in gone:
        assert not os.path.exists(path), path
    done = cli.run("verify", name)
    assert done.returncode == 0, done.stdout
    for path, regions in frozen.values():
        assert_file_reads(path, regions)
    assert_running_reads(vms, name, present)
    vms.write(name, 0x77, 15 * MIB)
    vms.stop(name)
    assert_file_reads(chain[0], content({15 * MIB: 0x77}, below=present))
    for path, regions in frozen.values():
        assert_file_reads(path, regions)
    assert cli.run("verify", name).returncode == 0


# ---- libvirtd restarts during the job ------------------------------------------------------


def test_libvirtd_restart_during_an_active_commit_then_recover_pivots(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1, s2 = vms.path("vda.s1"), vms.path("vda.s2")
    cli.run("snapshot", name, "s1")  # freezes the disk
    vms.write(name, 0x11, 8 * MIB)
    cli.run("snapshot", name, "s2")  # freezes vda.s1
    vms.write(name, 0x22, *BULK)  # into vda.s2: what the commit moves
    # s2 goes: vda.s2 (active) is committed into vda.s1, then the domain pivots onto vda.s1
    job = Background(cli, "delete", name, "s2", "--strategy", "commit")
    background.append(job)
    _running_job(vms, name, ACTIVE_COMMIT)
    restart_libvirtd(vms)
    info = _job(vms, name)  # QEMU's job ran on and libvirt found it again
    assert info["type"] == ACTIVE_COMMIT, info  # (an active commit ends only with a pivot)
    code, out = job.wait()  # snapledger's connection broke under it: the step failed
    assert code == 1 and "libvirt" in out, out
    op = _operation(cli, name)
    assert op["failure"] is not None and op["done"] == 0
    assert _domblklist(name) == [s2] and os.path.exists(s2)  # nothing deleted
    cli.run("snapshot", name, "s3", expect=4)  # the failed operation holds the VM
    vms.write(name, 0x33, 12 * MIB)  # the guest writes on during the job (QEMU mirrors it)
    vms.write(name, 0x34, 2 * MIB)  # over what the job copies
    cli.run("recover", name)  # waits for the job and pivots
    _check_finished(cli, vms, name, op, chain=[s1, base],
                    frozen={"s1": (base, content({}))},
                    present=content({8 * MIB: 0x11, 12 * MIB: 0x33, 2 * MIB: 0x34}, 0x22),
                    gone=[s2])


def test_libvirtd_and_snapledger_crash_during_a_non_active_commit_that_ends_meanwhile(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1, s2, s3 = vms.path("vda.s1"), vms.path("vda.s2"), vms.path("vda.s3")
    _three_snapshots(cli, vms, name)
    # s2 goes: vda.s2, a backing file of the running vda.s3, is committed into vda.s1 (a
    # non-active commit: QEMU re-points vda.s3 onto vda.s1), then vda.s2 is deleted
    job = Background(cli, "delete", name, "s2")
    background.append(job)
    _running_job(vms, name, COMMIT)
    job.kill()  # snapledger crashes (first: it must not see libvirtd go and record a failure)
    pids = libvirtd_pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # and so does libvirtd
    wait_for("libvirtd to die", lambda: not any(_alive(pid) for pid in pids))
    op = _operation(cli, name)
    assert op["failure"] is None and op["done"] == 0
    # recover without libvirtd: it fails in one line, and qemu-img does nothing behind QEMU
    done = cli.run("recover", name, expect=1)
    assert "libvirt" in done.stderr
    assert os.path.exists(s2)
    # QEMU finishes the job on its own meanwhile: vda.s3 is re-pointed onto vda.s1 on disk
    wait_for("QEMU to finish the commit", lambda: _backing(s3) == s1)
    start_libvirtd()
    vms.reconnect()
    assert not _job(vms, name)  # libvirt saw the job end when it came back
    merged = _stamp(s1)
    cli.run("recover", name)  # the commit is taken as done, never committed again by qemu-img
    assert _stamp(s1) == merged
    s3_state = content({8 * MIB: 0x11}, 0x22)
    _check_finished(cli, vms, name, op, chain=[s3, s1, base],
                    frozen={"s1": (base, content({})), "s3": (s1, s3_state)},
                    present=content({12 * MIB: 0x33}, below=s3_state), gone=[s2])


def test_libvirtd_restart_during_a_block_pull_then_recover_waits_for_it(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1, s2 = vms.path("vda.s1"), vms.path("vda.s2")
    cli.run("snapshot", name, "s1")  # freezes the disk
    vms.write(name, 0x22, *BULK)  # into vda.s1: what the pull moves
    cli.run("snapshot", name, "s2")  # freezes vda.s1
    vms.write(name, 0x33, 12 * MIB)
    # s2 goes: vda.s1 is pulled into the running vda.s2 (a block pull), then deleted
    job = Background(cli, "delete", name, "s2", "--strategy", "pull")
    background.append(job)
    _running_job(vms, name, PULL)
    restart_libvirtd(vms)
    code, out = job.wait()
    assert code == 1 and "libvirt" in out, out
    op = _operation(cli, name)
    assert op["failure"] is not None and op["done"] == 0
    assert os.path.exists(s1)
    vms.write(name, 0x44, 2 * MIB)  # the guest writes over what the pull copies
    cli.run("recover", name)  # the job (running, or just ended) is waited for, not started again
    _check_finished(cli, vms, name, op, chain=[s2, base],
                    frozen={"s1": (base, content({}))},
                    present=content({12 * MIB: 0x33, 2 * MIB: 0x44}, 0x22), gone=[s1])


# ---- snapledger killed during the job, libvirtd running on ---------------------------------


@pytest.mark.parametrize("pivoted", [False, True], ids=["job-running", "pivoted-before-the-crash"])
def test_snapledger_killed_during_an_active_commit_then_recover(
    tmp_path: Path, libvirtd: Domains, background: list[Background], pivoted: bool
) -> None:
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1 = vms.path("vda.s1")
    cli.run("snapshot", name, "s1")  # freezes the disk (adopted: it may be written)
    vms.write(name, 0x22, *BULK)
    job = Background(cli, "delete", name, "s1")  # vda.s1 (active) committed into the disk
    background.append(job)
    _running_job(vms, name, ACTIVE_COMMIT)
    job.kill()
    op = _operation(cli, name)
    assert op["failure"] is None and op["done"] == 0
    vms.write(name, 0x33, 12 * MIB)  # the guest writes on during the job
    written = {12 * MIB: 0x33}
    if pivoted:
        # what the killed process would have done next: the pivot, unrecorded. The guest then
        # writes into the disk over data vda.s1 still holds: committing vda.s1 again (qemu-img)
        # would overwrite it.
        wait_for("the job to be ready", lambda: (i := _job(vms, name)) and i["cur"] == i["end"])
        vms.domain(name).blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        wait_for("the pivot", lambda: _domblklist(name) == [base])
        vms.write(name, 0x55, 2 * MIB)
        written[2 * MIB] = 0x55
    cli.run("recover", name)
    _check_finished(cli, vms, name, op, chain=[base], frozen={},
                    present=content(written, 0x22), gone=[s1])


@pytest.mark.parametrize("kind", ["non-active-commit", "pull"])
def test_snapledger_killed_during_a_job_that_ends_by_itself_then_recover_waits_for_it(
    tmp_path: Path, libvirtd: Domains, background: list[Background], kind: str
) -> None:
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1, s2, s3 = vms.path("vda.s1"), vms.path("vda.s2"), vms.path("vda.s3")
    _three_snapshots(cli, vms, name)
    s2_state = content({8 * MIB: 0x11})
    s3_state = content({8 * MIB: 0x11}, 0x22)
    present = content({12 * MIB: 0x33}, below=s3_state)
    if kind == "pull":  # s3 goes: vda.s2 is pulled into the running vda.s3
        job = Background(cli, "delete", name, "s3", "--strategy", "pull")
        frozen = {"s1": (base, content({})), "s2": (s1, s2_state)}
    else:  # s2 goes: vda.s2 is committed into vda.s1, below the running vda.s3
        job = Background(cli, "delete", name, "s2")
        frozen = {"s1": (base, content({})), "s3": (s1, s3_state)}
    background.append(job)
    _running_job(vms, name, PULL if kind == "pull" else COMMIT)
    job.kill()
    op = _operation(cli, name)
    assert _job(vms, name)  # QEMU's job runs on (a non-active commit keeps vda.s2 locked)
    cli.run("recover", name)  # waits for the job, then takes the merge as done
    _check_finished(cli, vms, name, op, chain=[s3, s1, base], frozen=frozen, present=present,
                    gone=[s2])


# ---- the domain shut down after the pivot -------------------------------------------------


def test_snapledger_killed_then_a_pivot_by_hand_then_the_domain_is_destroyed_then_recover(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    """snapledger died during the job; the operator pivoted by hand (virsh blockjob --pivot),
    the guest wrote into the disk (the new active image), and the domain was destroyed before
    `recover`. libvirt 9.0 rewrote the persistent definition at the pivot, but no pivot of ours
    is recorded: a definition on the base looks the same as one pointed there by hand with the
    guest's writes still in vda.s1 only. So `recover` refuses (exit 3) and says both ways out;
    `recover --pivoted` (the operator's word) takes the commit as done: committing vda.s1 again
    with qemu-img would overwrite what the guest wrote after the pivot; vda.s1 is kept on disk (a
    word can be wrong) and named in the note. The domain ran when the
    delete began, so recover starts it again, on the disk. (snapledger's own pivot followed by
    a kill is in test_libvirt_world.py.)"""
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1 = vms.path("vda.s1")
    cli.run("snapshot", name, "s1")  # freezes the disk (adopted: it may be written)
    vms.write(name, 0x22, *BULK)  # into vda.s1: what the commit moves
    job = Background(cli, "delete", name, "s1")  # vda.s1 (active) committed into the disk
    background.append(job)
    _running_job(vms, name, ACTIVE_COMMIT)
    job.kill()
    op = _operation(cli, name)
    assert op["failure"] is None and op["done"] == 0
    vms.write(name, 0x33, 12 * MIB)  # during the job (QEMU mirrors it into the disk)
    wait_for("the job to be ready", lambda: (i := _job(vms, name)) and i["cur"] == i["end"])
    vms.domain(name).blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    wait_for("the pivot", lambda: _domblklist(name) == [base])
    # libvirt rewrote the persistent definition at the pivot, not only the running one
    assert vms.sources(name, inactive=True)["vda"] == [base]
    vms.write(name, 0x55, 2 * MIB)  # into the disk, over 0x22 that vda.s1 still holds
    vms.stop(name)  # virsh destroy (no OS to shut down gracefully)
    assert not vms.running(name) and os.path.exists(s1)
    present = content({12 * MIB: 0x33, 2 * MIB: 0x55}, 0x22)
    assert_file_reads(base, present)  # what the guest left on the disk
    merged = _stamp(base)
    refused = cli.run("recover", name, expect=3)
    assert "never asked libvirt to pivot" in refused.stderr and "--pivoted" in refused.stderr
    assert _stamp(base) == merged and os.path.exists(s1)
    vouched = cli.run("recover", name, "--pivoted")  # the commit is taken as done
    assert _stamp(base) == merged  # qemu-img committed nothing
    # only vouched for: vda.s1 is kept, in case the word was wrong, and the note names it
    assert f"{s1} was kept on disk" in " ".join(vouched.stdout.split())
    assert os.path.exists(s1)
    os.remove(s1)  # the operator compared it with the disk: what the note asks
    shown = cli.json("show", name)
    assert shown["operation"] is None
    assert _steps_done(cli, name, op["id"]) == list(range(op["steps"]))  # nothing done twice
    assert shown["disks"]["vda"]["active"] == base and shown["snapshots"] == []
    assert not os.path.exists(s1)
    assert_file_reads(base, present)  # the guest's writes after the pivot are kept
    done = cli.run("verify", name)
    assert done.returncode == 0, done.stdout
    assert vms.running(name)  # started again by recover
    assert vms.sources(name, inactive=True)["vda"] == [base]
    assert _domblklist(name) == [base]
    assert vms.sources(name)["vda"] == [base]
    assert_running_reads(vms, name, present)
    assert cli.run("verify", name).returncode == 0
    vms.stop(name)
    vms.domain(name).create()  # virsh start: on the disk
    assert _domblklist(name) == [base]


def test_a_live_active_commit_updates_the_persistent_definition_so_a_restart_boots_on_the_base(
    tmp_path: Path, libvirtd: Domains
) -> None:
    """A live delete done in full (active commit, pivot, top deleted) on a running persistent
    domain: destroyed and started again, the domain runs on the base, not the deleted top."""
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1, s2 = vms.path("vda.s1"), vms.path("vda.s2")
    cli.run("snapshot", name, "s1")  # freezes the disk
    vms.write(name, 0x11, 8 * MIB)
    cli.run("snapshot", name, "s2")  # freezes vda.s1
    vms.write(name, 0x22, *BULK)  # into vda.s2: what the commit moves
    cli.run("delete", name, "s2", "--strategy", "commit")  # vda.s2 (active) into vda.s1, pivot
    assert not os.path.exists(s2)
    assert _domblklist(name) == [s1]
    assert vms.sources(name, inactive=True)["vda"][0] == s1  # the persistent definition too
    present = content({8 * MIB: 0x11}, 0x22)
    vms.write(name, 0x66, 14 * MIB)  # into vda.s1, the active image now
    present = content({14 * MIB: 0x66}, below=present)
    vms.stop(name)  # virsh destroy
    assert vms.sources(name, inactive=True)["vda"][0] == s1
    assert_file_reads(s1, present)
    assert_file_reads(base, content({}))  # s1's frozen image is untouched
    assert cli.run("verify", name).returncode == 0
    vms.domain(name).create()  # virsh start
    assert _domblklist(name) == [s1]
    assert vms.sources(name)["vda"] == [s1, base]
    assert_running_reads(vms, name, present)
    done = cli.run("verify", name)
    assert done.returncode == 0, done.stdout
    cli.run("snapshot", name, "s3")  # the VM is usable: a new live snapshot over vda.s1
    assert _domblklist(name) == [vms.path("vda.s3")]


def test_snapledger_killed_during_an_active_commit_then_the_domain_is_destroyed_then_recover(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    """No pivot: the domain is destroyed while the job runs (QEMU cancels it), so vda.s1 still
    holds the present and the persistent definition still names it. `recover` commits it with
    qemu-img, and must point the persistent definition at the disk before vda.s1 is deleted
    (the DefineDomain step a delete on a running persistent domain carries)."""
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1 = vms.path("vda.s1")
    cli.run("snapshot", name, "s1")  # freezes the disk
    vms.write(name, 0x22, *BULK)  # into vda.s1: what the commit moves
    job = Background(cli, "delete", name, "s1")
    background.append(job)
    _running_job(vms, name, ACTIVE_COMMIT)
    job.kill()
    op = _operation(cli, name)
    assert op["failure"] is None and op["done"] == 0
    vms.write(name, 0x33, 12 * MIB)  # into vda.s1, mirrored by the job
    vms.stop(name)  # virsh destroy: the job is cancelled, no pivot
    assert vms.sources(name, inactive=True)["vda"][0] == s1
    present = content({12 * MIB: 0x33}, 0x22)
    assert_file_reads(s1, present)
    cli.run("recover", name)
    shown = cli.json("show", name)
    assert shown["operation"] is None
    assert _steps_done(cli, name, op["id"]) == list(range(op["steps"]))
    assert shown["disks"]["vda"]["active"] == base
    assert not os.path.exists(s1)
    assert_file_reads(base, present)
    assert vms.sources(name, inactive=True)["vda"][0] == base  # not the deleted vda.s1
    done = cli.run("verify", name)
    assert done.returncode == 0, done.stdout
    assert vms.running(name) and _domblklist(name) == [base]  # started again by recover
    assert_running_reads(vms, name, present)
    vms.stop(name)
    vms.domain(name).create()  # virsh start: on the disk
    assert _domblklist(name) == [base]
    assert_running_reads(vms, name, present)
