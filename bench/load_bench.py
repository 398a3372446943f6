"""Load on one ledger (issue 12, item 6): 1, 2, 4, 8 and 16 processes doing snapshot + delete
cycles at once on one PostgreSQL ledger and on one SQLite ledger.

    python bench/load_bench.py [--stores postgres,sqlite] [--modes inproc,cli]
                               [--levels 1,2,4,8,16] [--seconds 20] [--hosts 4]
                               [--vms 32] [--image-mib 2] [--fsync on|off] [--postgres URL]
                               [--json FILE] [--skip-busy-checkpoints]

Each level starts on a fresh ledger (a new database on the private server, a new SQLite file)
with the same fleet of --vms VMs, dealt out to the workers (VM j to worker j mod N): each
worker has VMs of its own, and every level folds and checkpoints the same number of VMs, whose
event streams grow with the total rate, not with the number of workers. Worker k is given
`SNAPLEDGER_HOST=h<k mod hosts>`; its VMs are adopted before the clock starts; then, for
--seconds, it takes snapshot `s<i>` of its next VM and deletes it again, round robin. Two ways to run a worker:

- `cli`: the real command line, one whole `python -m snapledger.adapters.cli` process per
  command, over real qcow2 images of --image-mib MiB made with qemu-img. What an operator's
  scripts get. A worker is a thread here that runs its commands one after the other; the CPU
  time of each command is the child's and its qemu-img's (wait4's rusage). The processes use a
  bytecode cache (PYTHONPYCACHEPREFIX, warmed by the adopts), as an installed package has.
- `inproc`: one long-lived process per worker, driving the service in-process
  (`ledger_service(LedgerApplication(url), SimulatedStorage())`): no interpreter start, no
  imports, no qemu-img, so what is left is the ledger's own cost and its ceiling. The worker
  times, per command, the store's saves: from the start of the save's transaction until the
  events are in (on PostgreSQL the library's `LOCK TABLE ... IN EXCLUSIVE MODE`, which orders
  every save and so the hash chain, is taken there; on SQLite the write lock), then from there
  to the commit (the chain records are computed and written under that lock), and the
  persisted projection's checkpoint write (its own lock). With PostgreSQL's one-statement save
  (adapters/eventstore/chain_postgres.py since issue 12) there is no point to split at: the
  whole save is in the first figure.

PostgreSQL: a private server (as tests/postgres_server.py starts one), with fsync on by
default (a real ledger's commit waits for its WAL to be on disk, and the lock that orders the
chain is held until then); --postgres uses a server of yours instead (a database per level is
created there). While a level runs on PostgreSQL, a sampler asks pg_stat_activity every 20 ms
how many backends wait for a lock (heavyweight lock waits: the table lock, the checkpoint's
advisory lock): the mean number waiting, times the window, is the lock waiting of all commands.

Per level: commands done in the window and per second (snapshot and delete each count as one),
p50/p99 of a command's wall time, conflicts (exit 4 / ConcurrentUpdate) and other failures,
CPU per command (the worker's own), the machine's CPU use (/proc/stat, both cores) and load
average. After each level the ledger is checked: every command a worker saw succeed has its
closing event (SnapshotTaken / SnapshotDeleted of that VM and name) and no closing event is
there that no worker saw, no operation is left open, positions run 1..N without a gap, and the
hash chain is whole (`snapledger verify` for the cli mode, whose images are real; the same
chain check, `LedgerApplication.check_chain`, for inproc, whose images live in the workers).

Targets (PostgreSQL, 2 cores): 8 processes >= 1.8x the commands per second of 1; 16 >= 0.9x of
8; p99 <= 1 s; nothing lost. The RESULT line says which are met, per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.postgres_server import private_server  # noqa: E402

CLI = [sys.executable, "-m", "snapledger.adapters.cli"]
CONFLICT = 4  # the exit code of a lost race (docs/cli.md)
SAMPLE_EVERY = 0.02  # seconds between pg_stat_activity samples
TARGET_SCALE_8 = 1.8
TARGET_SCALE_16 = 0.9
TARGET_P99_MS = 1000.0


# ---- what a worker reports ------------------------------------------------------------------


@dataclass
class Command:
    """One command as a worker saw it."""

    kind: str  # "snapshot" | "delete"
    vm: str
    snap: str
    started: float  # time.time() at its start
    wall: float  # seconds
    cpu: float  # seconds of the worker's (or the child's) CPU
    outcome: str  # "ok" | "conflict" | "failed: ..."
    saves: int = 0  # inproc: the store's saves this command made
    save_in: float = 0.0  # inproc: seconds from a save's start until its events were in
    save_rest: float = 0.0  # inproc: seconds from there to the commit (chain records, commit)
    checkpoint: float = 0.0  # inproc: seconds writing the persisted projection
    checkpoint_cpu: float = 0.0  # inproc: CPU seconds of that
    catch_up: float = 0.0  # inproc: seconds folding what was recorded since the last look
    catch_up_cpu: float = 0.0  # inproc: CPU seconds of that


# ---- the ledger's clock (inproc workers) ------------------------------------------------------


class SaveTimes:
    """Sums of the time the store's saves take, split where the lock that orders the chain is
    known to be held: before that point a save may wait for it, after it the save holds it."""

    PARTS = ("saves", "save_in", "save_rest", "checkpoint", "checkpoint_cpu", "catch_up", "catch_up_cpu")

    def __init__(self) -> None:
        self.sums: dict[str, float] = dict.fromkeys(self.PARTS, 0.0)
        self._started = 0.0
        self._in = 0.0

    def take(self) -> dict[str, float]:
        out, self.sums = self.sums, dict.fromkeys(self.PARTS, 0.0)
        return out

    def begin(self) -> None:
        self._started = time.perf_counter()
        self._in = 0.0

    def events_in(self) -> None:
        if not self._in:
            self._in = time.perf_counter()

    def end(self) -> None:
        now = time.perf_counter()
        inside = self._in or now
        self.sums["saves"] += 1
        self.sums["save_in"] += inside - self._started
        self.sums["save_rest"] += now - inside

    def timing(self, original: Callable[..., Any], part: str) -> Callable[..., Any]:
        """`original`, its wall and CPU time added to `part` and `part`_cpu."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.sums[part] += time.perf_counter() - wall
                self.sums[f"{part}_cpu"] += time.process_time() - cpu

        return timed


def instrument(times: SaveTimes) -> None:
    """Wrap the recorders' methods (class attributes, so every recorder of this process)."""
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    from snapledger.adapters.checkpoint.persisted import PersistedProjection
    from snapledger.adapters.eventstore.chain import ChainedSQLiteApplicationRecorder
    from snapledger.adapters.eventstore.chain_postgres import ChainedPostgresApplicationRecorder

    def whole_save(original: Callable[..., Any]) -> Callable[..., Any]:
        def insert_events(self: Any, *args: Any, **kwargs: Any) -> Any:
            times.begin()
            try:
                return original(self, *args, **kwargs)
            finally:
                times.end()

        return insert_events

    def marks_in(original: Callable[..., Any], before: bool) -> Callable[..., Any]:
        def marked(self: Any, *args: Any, **kwargs: Any) -> Any:
            if before:
                times.events_in()
            found = original(self, *args, **kwargs)
            if not before:
                times.events_in()
            return found

        return marked

    for recorder in (ChainedPostgresApplicationRecorder, ChainedSQLiteApplicationRecorder):
        recorder.insert_events = whole_save(recorder.insert_events)  # type: ignore[method-assign]
    # PostgreSQL: the library syncs its pipeline (LOCK TABLE, NOTIFY, INSERT) and only then
    # calls this, which continues the chain: the lock is held from here to the commit.
    pg = ChainedPostgresApplicationRecorder
    pg._fetch_ids_after_insert_events = marks_in(pg._fetch_ids_after_insert_events, True)  # type: ignore[method-assign]
    # SQLite: the library's INSERT takes the write lock (BEGIN is deferred); after it the chain.
    lite = SQLiteApplicationRecorder
    lite._insert_events = marks_in(lite._insert_events, False)  # type: ignore[method-assign]

    PersistedProjection.save = times.timing(PersistedProjection.save, "checkpoint")  # type: ignore[method-assign]
    PersistedProjection.catch_up = times.timing(PersistedProjection.catch_up, "catch_up")  # type: ignore[method-assign]


def skip_busy_checkpoints() -> None:
    """An experiment, not what snapledger does: a PostgreSQL checkpoint write that finds the
    projection writers' advisory lock taken gives up at once (the save is then "failed", which
    PersistedProjection.save already allows: the next reader catches up) instead of waiting."""
    from eventsourcing.persistence import OperationalError

    from snapledger.adapters.checkpoint import postgres

    def try_lock(self: postgres.PostgresProjectionStore, curs: Any) -> None:
        curs.execute("SELECT pg_try_advisory_xact_lock(%s, %s) AS got",
                     (postgres.LOCK_CLASS, self.lock_key))
        if not curs.fetchone()["got"]:
            raise OperationalError("another writer is checkpointing")

    postgres.PostgresProjectionStore._lock_writers = try_lock  # type: ignore[method-assign]


def inproc_worker(config: dict[str, Any]) -> None:
    """One worker process: adopt its VMs, say ready, wait for the start, run, report."""
    os.environ["SNAPLEDGER_HOST"] = config["host"]
    times = SaveTimes()
    instrument(times)
    if config.get("skip_busy_checkpoints"):
        skip_busy_checkpoints()
    from snapledger.adapters.compose import ledger_service, recording_context
    from snapledger.adapters.eventstore.application import LedgerApplication
    from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
    from snapledger.domain.errors import ConcurrentUpdate

    storage = SimulatedStorage()
    app = LedgerApplication(config["url"], recorded_by=recording_context(actor=config["worker"]))
    ledger = ledger_service(app, storage)
    vms: list[str] = config["vms"]
    for vm in vms:
        path = f"/images/{config['host']}/{vm}/base.qcow2"
        storage.make_image(path, 64 * CLUSTER, {0: 1})
        ledger.adopt(vm, {"vda": path})
    times.take()
    print("ready", flush=True)
    deadline = float(sys.stdin.readline().split()[1])
    done: list[Command] = []
    i = 0
    while time.time() < deadline:
        vm = vms[i % len(vms)]
        snap = f"s{i}"
        i += 1
        for kind in ("snapshot", "delete"):
            started, cpu, wall = time.time(), time.process_time(), time.perf_counter()
            try:
                if kind == "snapshot":
                    ledger.snapshot(vm, snap)
                else:
                    ledger.delete(vm, snap)
                outcome = "ok"
            except ConcurrentUpdate:
                outcome = "conflict"
            except Exception as error:  # counted and reported, the run goes on
                outcome = f"failed: {type(error).__name__}: {error}"
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            parts = times.take()
            done.append(Command(kind, vm, snap, started, wall, cpu, outcome, int(parts.pop("saves")),
                                **parts))
            if outcome != "ok":
                break  # no delete of a snapshot that was not taken
    ledger.close()
    print(json.dumps([asdict(c) for c in done]), flush=True)


# ---- the command line (cli workers) -----------------------------------------------------------


def run_cli(argv: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """Exit code, CPU seconds (user + sys) and stderr of one whole process."""
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return child.returncode, usage.ru_utime + usage.ru_stime, err.read().decode(errors="replace")


# Python's bytecode cache for the command line's processes, as an installed package has it
# (show_bench.py's way): without it every snapledger module is compiled again by every command.
PYCACHE = Path(tempfile.gettempdir()) / "snapledger-load-bench-pycache"


def cli_env(url: str, host: str, worker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SNAPLEDGER_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(SNAPLEDGER_STORE=url, SNAPLEDGER_HOST=host, SNAPLEDGER_ACTOR=worker,
               PYTHONPYCACHEPREFIX=str(PYCACHE))
    return env


def cli_worker(url: str, host: str, worker: str, vms: list[str], deadline: float,
               done: list[Command]) -> None:
    env = cli_env(url, host, worker)
    i = 0
    while time.time() < deadline:
        vm = vms[i % len(vms)]
        snap = f"s{i}"
        i += 1
        for kind in ("snapshot", "delete"):
            started, wall = time.time(), time.perf_counter()
            code, cpu, err = run_cli([*CLI, kind, vm, snap], env)
            wall = time.perf_counter() - wall
            outcome = "ok" if code == 0 else "conflict" if code == CONFLICT else f"failed: exit {code}: {err.strip()}"
            done.append(Command(kind, vm, snap, started, wall, cpu, outcome))
            if outcome != "ok":
                break


# ---- the stores -----------------------------------------------------------------------------


@contextmanager
def private_postgres(fsync: bool) -> Iterator[tuple[str, Path]]:
    """A throwaway server (tests/postgres_server.py's), fsync as asked; yields its base URL
    (no database: each level creates its own) and its postmaster.pid."""
    with private_server(fsync, "-c max_connections=200") as (base, data):
        yield base, data / "postmaster.pid"


def new_postgres_db(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


class LockSampler:
    """Counts, every SAMPLE_EVERY seconds, the backends of one database waiting for a lock:
    for the events table (`relation`: the LOCK TABLE that orders the saves and the chain) and
    for an advisory lock (the persisted projection's writers)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples = 0
        self.waiting = 0
        self.table = 0
        self.advisory = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psycopg

        dbname = self.url.rsplit("/", 1)[1]
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(SAMPLE_EVERY):
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), "
                    "count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'relation'), "
                    "count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'advisory') "
                    "FROM pg_stat_activity WHERE datname = %s", (dbname,)
                ).fetchone()
                assert row is not None
                self.samples += 1
                self.waiting += int(row[0])
                self.table += int(row[1])
                self.advisory += int(row[2])

    def mean(self, count: int) -> float:
        return count / self.samples if self.samples else 0.0


# ---- the machine ----------------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def server_cpu(pid_file: Path | None) -> float:
    """CPU seconds used so far by a PostgreSQL server: its postmaster (with the backends it has
    reaped) and every live child of it. 0 without a server of our own."""
    if pid_file is None:
        return 0.0
    postmaster = int(pid_file.read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        ppid, utime, stime, cutime, cstime = int(fields[1]), *map(int, fields[11:15])
        if int(proc.name) == postmaster:
            total += utime + stime + cutime + cstime
        elif ppid == postmaster:
            total += utime + stime
    return total / tick


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ---- one level ------------------------------------------------------------------------------


@dataclass
class Level:
    store: str
    mode: str
    processes: int
    seconds: float
    done: int = 0
    per_second: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    conflicts: int = 0
    failed: int = 0
    cpu_ms: float = 0.0  # the worker's CPU per command (median)
    worker_cpu_ms: float = 0.0  # the workers' CPU in the window, per command done
    server_cpu_ms: float = 0.0  # PostgreSQL's CPU in the window, per command done
    other_cpu_ms: float = 0.0  # the rest of the machine's busy time, per command done
    machine_cpu: float = 0.0  # busy share of both cores over the window
    load_1m: float = 0.0  # at the window's end
    lock_waiting: float = 0.0  # PostgreSQL: mean backends waiting for a lock
    lock_wait_ms: float = 0.0  # PostgreSQL: that, per command in the window
    table_wait_ms: float = 0.0  # ... of it for the events table's lock (the chain's order)
    advisory_wait_ms: float = 0.0  # ... of it for the projection writers' advisory lock
    saves: float = 0.0  # inproc: saves per command
    save_in_ms: float = 0.0  # inproc: mean per command, start of a save to its events in
    save_rest_ms: float = 0.0  # inproc: mean per command, events in to commit
    checkpoint_ms: float = 0.0  # inproc: mean per command, the projection's write
    checkpoint_cpu_ms: float = 0.0  # inproc: the CPU of it
    catch_up_ms: float = 0.0  # inproc: mean per command, folding what others recorded
    catch_up_cpu_ms: float = 0.0  # inproc: the CPU of it
    events: int = 0
    lost: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def vm_names(worker: int, workers: int, vms: int) -> list[str]:
    """Worker `worker`'s share of the fleet: every level has the same VMs."""
    return [f"vm{j}" for j in range(vms) if j % workers == worker]


def run_level(store: str, mode: str, url: str, processes: int, args: argparse.Namespace,
              scratch: Path, pid_file: Path | None) -> Level:
    level = Level(store, mode, processes, args.seconds)
    hosts = [f"h{k % args.hosts}" for k in range(processes)]
    workers = [vm_names(k, processes, args.vms) for k in range(processes)]
    _create_ledger(url)
    commands: list[Command] = []
    if mode == "cli":
        for k in range(processes):
            _adopt_real(url, hosts[k], f"w{k}", workers[k], scratch / hosts[k], args.image_mib)
        start = time.time() + 0.5
        deadline = start + args.seconds
        lists: list[list[Command]] = [[] for _ in range(processes)]
        threads = [
            threading.Thread(target=cli_worker, args=(url, hosts[k], f"w{k}", workers[k], deadline, lists[k]))
            for k in range(processes)
        ]
        busy0, total0 = cpu_ticks()
        server0, driver0 = server_cpu(pid_file), time.process_time()
        with _sampler(store, url) as sampler:
            for t in threads:
                t.start()
            time.sleep(max(0.0, deadline - time.time()))
            busy1, total1 = cpu_ticks()
            server1, driver1 = server_cpu(pid_file), time.process_time()
            level.load_1m = load_average()
            for t in threads:
                t.join()
        commands = [c for one in lists for c in one]
    else:
        children = []
        for k in range(processes):
            config = {"url": url, "host": hosts[k], "worker": f"w{k}", "vms": workers[k],
                      "skip_busy_checkpoints": args.skip_busy_checkpoints}
            children.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "ready":
                raise SystemExit(f"a worker did not start: {line!r}")
        start = time.time() + 0.2
        deadline = start + args.seconds
        busy0, total0 = cpu_ticks()
        server0, driver0 = server_cpu(pid_file), time.process_time()
        with _sampler(store, url) as sampler:
            for child in children:
                assert child.stdin is not None
                child.stdin.write(f"go {deadline}\n")
                child.stdin.flush()
            time.sleep(max(0.0, deadline - time.time()))
            busy1, total1 = cpu_ticks()
            server1, driver1 = server_cpu(pid_file), time.process_time()
            level.load_1m = load_average()
            for child in children:
                out, _ = child.communicate()
                if child.returncode != 0:
                    raise SystemExit(f"a worker failed (exit {child.returncode})")
                commands += [Command(**c) for c in json.loads(out.strip().splitlines()[-1])]
    level.machine_cpu = (busy1 - busy0) / max(1, total1 - total0)
    machine_seconds = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
    in_window = [c for c in commands if c.started + c.wall <= deadline]
    ok = [c for c in in_window if c.outcome == "ok"]
    level.done = len(ok)
    level.per_second = len(ok) / args.seconds
    walls = sorted(c.wall * 1000 for c in in_window)
    if walls:
        level.p50_ms = statistics.median(walls)
        level.p99_ms = walls[min(len(walls) - 1, int(0.99 * len(walls)))]
        level.max_ms = walls[-1]
        level.mean_ms = statistics.fmean(walls)
        level.cpu_ms = statistics.median(c.cpu * 1000 for c in in_window)
    if ok:
        worker_seconds = sum(c.cpu for c in in_window) + (driver1 - driver0)
        server_seconds = server1 - server0
        level.worker_cpu_ms = worker_seconds * 1000 / len(ok)
        level.server_cpu_ms = server_seconds * 1000 / len(ok)
        level.other_cpu_ms = (machine_seconds - worker_seconds - server_seconds) * 1000 / len(ok)
    level.conflicts = sum(c.outcome == "conflict" for c in commands)
    level.failures = sorted({c.outcome for c in commands if c.outcome.startswith("failed")})
    level.failed = sum(c.outcome.startswith("failed") for c in commands)
    if sampler is not None:
        per_command = args.seconds * 1000 / max(1, len(in_window))
        level.lock_waiting = sampler.mean(sampler.waiting)
        level.lock_wait_ms = level.lock_waiting * per_command
        level.table_wait_ms = sampler.mean(sampler.table) * per_command
        level.advisory_wait_ms = sampler.mean(sampler.advisory) * per_command
    if mode == "inproc" and in_window:
        n = len(in_window)
        level.saves = sum(c.saves for c in in_window) / n
        level.save_in_ms = sum(c.save_in for c in in_window) * 1000 / n
        level.save_rest_ms = sum(c.save_rest for c in in_window) * 1000 / n
        level.checkpoint_ms = sum(c.checkpoint for c in in_window) * 1000 / n
        level.checkpoint_cpu_ms = sum(c.checkpoint_cpu for c in in_window) * 1000 / n
        level.catch_up_ms = sum(c.catch_up for c in in_window) * 1000 / n
        level.catch_up_cpu_ms = sum(c.catch_up_cpu for c in in_window) * 1000 / n
    level.events, level.lost = check_ledger(url, commands, [v for vms in workers for v in vms])
    if mode == "cli":
        code, _, err = run_cli([*CLI, "verify"], cli_env(url, "h0", "checker"))
        if code != 0:
            level.lost.append(f"snapledger verify: exit {code}: {err.strip()[:500]}")
    return level


@contextmanager
def _sampler(store: str, url: str) -> Iterator[LockSampler | None]:
    if store != "postgres":
        yield None
        return
    with LockSampler(url) as sampler:
        yield sampler


def _create_ledger(url: str) -> None:
    from snapledger.adapters.eventstore.application import LedgerApplication

    LedgerApplication(url).close()  # the tables, before the workers race to make them


def _adopt_real(url: str, host: str, worker: str, vms: list[str], under: Path, mib: int) -> None:
    env = cli_env(url, host, worker)
    for vm in vms:
        folder = under / vm
        folder.mkdir(parents=True)
        base = folder / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), f"{mib}M"], check=True)
        subprocess.run(["qemu-io", "-c", f"write -P 7 0 {mib // 2}M", str(base)], check=True,
                       capture_output=True)
        code, _, err = run_cli([*CLI, "adopt", vm, "--disk", f"vda={base}"], env)
        if code != 0:
            raise SystemExit(f"adopt {vm}: exit {code}: {err}")


def check_ledger(url: str, commands: list[Command], vms: list[str]) -> tuple[int, list[str]]:
    """(events in the ledger, what is missing or wrong): every command seen to succeed has its
    closing event and no other closing event is there; no operation open; positions 1..N; the
    hash chain whole."""
    from snapledger.adapters.compose import ledger_service
    from snapledger.adapters.eventstore.application import LedgerApplication
    from snapledger.adapters.storage.simulated import SimulatedStorage
    from snapledger.domain.vm import vm_id

    app = LedgerApplication(url)
    problems: list[str] = []
    names = {vm_id(vm): vm for vm in vms}
    closed: set[tuple[str, str, str]] = set()
    positions: list[int] = []
    closing = {"SnapshotTaken": "snapshot", "SnapshotDeleted": "delete"}
    for event, position in app.events_after(0):
        positions.append(position)
        kind = closing.get(type(event).__name__)
        if kind is not None:
            closed.add((kind, names.get(event.originator_id, "?"), event.name))  # type: ignore[attr-defined]
    seen_ok = {(c.kind, c.vm, c.snap) for c in commands if c.outcome == "ok"}
    for kind, vm, snap in sorted(seen_ok - closed):
        problems.append(f"lost: {kind} {vm} {snap} succeeded but has no closing event")
    for kind, vm, snap in sorted(closed - seen_ok):
        problems.append(f"unreported: {kind} {vm} {snap} is recorded but no worker saw it succeed")
    if positions != list(range(1, len(positions) + 1)):
        gaps = sorted(set(range(1, (positions or [0])[-1] + 1)) - set(positions))
        problems.append(f"positions not 1..N: {len(gaps)} missing, first {gaps[:5]}")
    findings = app.check_chain()
    problems += [f"chain: {f}" for f in findings[:10]]
    with ledger_service(app, SimulatedStorage()) as ledger:
        view = ledger.refresh()
        for vm in vms:
            if view.vms[vm].operation is not None:
                problems.append(f"{vm}: an operation is left open")
    return len(positions), problems


# ---- the report -----------------------------------------------------------------------------


def table(levels: list[Level]) -> str:
    """Every level: throughput, latency, what was lost, where the CPU went."""
    head = ("| store | mode | processes | commands/s | × 1 process | p50 ms | p99 ms | conflicts | "
            "lost | CPU ms/command: client / server / rest | machine CPU | load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base: dict[tuple[str, str], float] = {}
    for lv in levels:
        if lv.processes == 1:
            base[(lv.store, lv.mode)] = lv.per_second
        one = base.get((lv.store, lv.mode))
        scale = f"{lv.per_second / one:.2f}" if one else "—"
        server = f"{lv.server_cpu_ms:.1f}" if lv.store == "postgres" else "—"
        lines.append(
            f"| {lv.store} | {lv.mode} | {lv.processes} | {lv.per_second:.1f} | {scale} | "
            f"{lv.p50_ms:.0f} | {lv.p99_ms:.0f} | {lv.conflicts} | {len(lv.lost) + lv.failed} | "
            f"{lv.worker_cpu_ms:.1f} / {server} / {lv.other_cpu_ms:.1f} | "
            f"{lv.machine_cpu:.0%} | {lv.load_1m:.1f} |"
        )
    return "\n".join(lines)


def ledger_table(levels: list[Level]) -> str:
    """The in-process levels: where a command's time goes in the ledger (means per command)."""
    head = ("| store | processes | command ms (mean) | lock wait ms: table + advisory | saves | "
            "in saves ms: to events in + rest | checkpoint ms (CPU) | catch-up ms (CPU) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for lv in levels:
        if lv.mode != "inproc":
            continue
        lock = f"{lv.table_wait_ms:.1f} + {lv.advisory_wait_ms:.1f}" if lv.store == "postgres" else "—"
        lines.append(
            f"| {lv.store} | {lv.processes} | {lv.mean_ms:.1f} | {lock} | {lv.saves:.1f} | "
            f"{lv.save_in_ms:.1f} + {lv.save_rest_ms:.1f} | {lv.checkpoint_ms:.1f} "
            f"({lv.checkpoint_cpu_ms:.1f}) | {lv.catch_up_ms:.1f} ({lv.catch_up_cpu_ms:.1f}) |"
        )
    return "\n".join(lines)


def verdicts(levels: list[Level]) -> list[str]:
    out = []
    for mode in sorted({lv.mode for lv in levels}):
        by_n = {lv.processes: lv for lv in levels if lv.store == "postgres" and lv.mode == mode}
        if not {1, 8, 16} <= set(by_n):
            continue
        s8 = by_n[8].per_second / by_n[1].per_second
        s16 = by_n[16].per_second / by_n[8].per_second
        p99 = max(lv.p99_ms for lv in by_n.values())
        lost = sum(len(lv.lost) + lv.failed for lv in levels if lv.mode == mode)
        met = s8 >= TARGET_SCALE_8 and s16 >= TARGET_SCALE_16 and p99 <= TARGET_P99_MS and lost == 0
        out.append(
            f"RESULT postgres {mode}: 8/1 = {s8:.2f} (>= {TARGET_SCALE_8}), 16/8 = {s16:.2f} "
            f"(>= {TARGET_SCALE_16}), worst p99 {p99:.0f} ms (<= {TARGET_P99_MS:.0f}), "
            f"lost or failed {lost} (all stores) -> {'met' if met else 'NOT met'}"
        )
    return out


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        inproc_worker(json.loads(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--modes", default="inproc,cli")
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hosts", type=int, default=4, help="simulated hosts the workers spread over")
    parser.add_argument("--vms", type=int, default=32,
                        help="VMs in the fleet, the same at every level, dealt out to the workers")
    parser.add_argument("--image-mib", type=int, default=2)
    parser.add_argument("--fsync", choices=("on", "off"), default="on")
    parser.add_argument("--postgres", help="a server's base URL (postgresql://user@host:port)")
    parser.add_argument("--json", help="write every level's figures here")
    parser.add_argument("--skip-busy-checkpoints", action="store_true",
                        help="experiment (inproc, PostgreSQL): a checkpoint write that finds "
                        "another under way is skipped instead of waiting for it")
    args = parser.parse_args()
    stores = args.stores.split(",")
    modes = args.modes.split(",")
    counts = [int(n) for n in args.levels.split(",")]
    levels: list[Level] = []
    scratch_root = Path(tempfile.mkdtemp(prefix="snapledger-load-"))
    try:
        with _postgres(args, "postgres" in stores) as (base, pid_file):
            for store in stores:
                for mode in modes:
                    for n in counts:
                        scratch = scratch_root / f"{store}-{mode}-{n}"
                        scratch.mkdir()
                        if store == "postgres":
                            url = new_postgres_db(base, f"load_{mode}_{n}")
                        else:
                            url = f"sqlite:///{scratch / 'ledger.sqlite'}"
                        level = run_level(store, mode, url, n, args, scratch, pid_file)
                        levels.append(level)
                        print(table([level]).splitlines()[-1], flush=True)
                        if mode == "inproc":
                            print(ledger_table([level]).splitlines()[-1], flush=True)
                        for problem in level.lost[:5] + level.failures[:5]:
                            print(f"    {problem}", flush=True)
                        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    print()
    print(table(levels))
    print()
    print(ledger_table(levels))
    for line in verdicts(levels):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(lv) for lv in levels], indent=1))
    return 0


@contextmanager
def _postgres(args: argparse.Namespace, wanted: bool) -> Iterator[tuple[str, Path | None]]:
    """The server's base URL and its postmaster.pid (None: not ours, its CPU is not counted)."""
    if not wanted:
        yield "", None
    elif args.postgres:
        yield args.postgres.rstrip("/"), None
    else:
        with private_postgres(args.fsync == "on") as found:
            yield found


if __name__ == "__main__":
    sys.exit(main())
