"""Whole-process `snapledger show VM --json` (and `--at-event N`) on a 100,000-event SQLite ledger,
or on a PostgreSQL ledger.

    python bench/show_bench.py [--db /tmp/snapledger-bench-100k.sqlite] [--events 100000]
                               [--repeat 21] [--fresh]
    python bench/show_bench.py --store postgresql://user@host:port/db [--events 5000] [--repeat 21]

The ledger is built once and cached at --db by rebuild_bench.build (many VMs in groups, played
through the real aggregates, planners and SimulatedStorage by _driver.Fleet, saved in batches,
then checked to replay to the driver's state). Each run is a fresh
`python -m snapledger.adapters.cli show VM --json` (adapters/cli/entry.py, as the console script)
with SNAPLEDGER_STORE pointing at it; wall
time and the child's CPU time (user + sys, from wait4's rusage) are reported, medians of
--repeat runs.

The runs use Python's bytecode cache (PYTHONPYCACHEPREFIX in a scratch folder, warmed by one
run; PYTHONDONTWRITEBYTECODE is dropped), as an installed package has it: without it every
snapledger module is compiled from source on every start.

First the persisted projection is brought up to date by one `show` (on a ledger that has none
yet, or one written by other code, that run folds every event and writes the checkpoints and
archive points: its time is reported). Then:

- `show VM --json`: answered by the entry module from the stored document
  (adapters/checkpoint/fast_show.py), before click or eventsourcing is even imported. Target:
  <= 100 ms median. `show VM` (for people) the same way, with rich.
- `show VM --json --at-event N`, N in the middle and near the end, each the farthest from the
  archive point before it (so the most events to replay). Target: <= 1 s.
- where the time goes, in one process: the imports, the stored document, loading the newest
  checkpoint, the `show` document from the view.

With --store (a PostgreSQL URL), the ledger there is used, built by the same generator if it is
empty. The fast path there is one psycopg connection of its own (no eventsourcing, no pool).
It is also timed without the fast path (NO_FAST_PATH: the checkpoint and the events after it),
and as it was before PostgreSQL had a persisted projection: a projection store that keeps
nothing (NO_PROJECTION), so it folds every event.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rebuild_bench import build, build_into  # noqa: E402

from snapledger.adapters.checkpoint.persisted import CHECKPOINT_EVERY  # noqa: E402
from snapledger.adapters.eventstore.application import LedgerApplication  # noqa: E402

TARGET_MS = 100.0
TARGET_AT_EVENT_MS = 1000.0
CLI = [sys.executable, "-m", "snapledger.adapters.cli"]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall ms, child CPU ms, stdout) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return wall, cpu, done.stdout


def median_runs(argv: list[str], env: dict[str, str], repeat: int) -> tuple[float, float, float, float]:
    """Median wall, median CPU, min and max wall."""
    runs = [timed(argv, env)[:2] for _ in range(repeat)]
    walls = [w for w, _ in runs]
    return statistics.median(walls), statistics.median(c for _, c in runs), min(walls), max(walls)


def import_ms(argv: list[str], env: dict[str, str]) -> tuple[float, list[tuple[float, str]]]:
    """Self import time of a process, summed per top-level package."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True, check=True
    )
    tops: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        package = m.group(4).split(".")[0]
        tops[package] = tops.get(package, 0) + int(m.group(1)) / 1000
    total = sum(tops.values())
    biggest = sorted(((ms, name) for name, ms in tops.items()), reverse=True)[:8]
    return total, biggest


IN_PROCESS = r"""
import json, sys, time
def now(): return time.perf_counter(), time.process_time()
t0 = now()
from snapledger.adapters.checkpoint.fast_show import stored_show_text
t1 = now()
text = stored_show_text(sys.argv[1], sys.argv[2])
t2 = now()
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.projections.dag import ImageDag
from snapledger.projections.documents import json_text, vm_document
t3 = now()
projection = PersistedProjection(LedgerApplication(sys.argv[1]))
top, tracking, rows = projection.store.read_current()
t4 = now()
view = projection.codec.view(rows, tracking.position)
t5 = now()
dag = ImageDag(view)
doc = json_text(vm_document(view, sys.argv[2], dag))
t6 = now()
assert text in (None, doc), "the stored document is not the view's"  # None: not SQLite
parts = {"import fast_show (fast path)": (t0, t1), "stored_show_text": (t1, t2),
         "import eventsourcing, domain, views": (t2, t3), "read the checkpoint's rows": (t3, t4),
         "decode them into a LedgerView": (t4, t5), "ImageDag + show document": (t5, t6)}
print(json.dumps({k: [b[0] - a[0], b[1] - a[1]] for k, (a, b) in parts.items()} | {"rows": len(rows)}))
"""


# `show` without the stored document: the checkpoint and the events after it (NO_FAST_PATH); and
# as on PostgreSQL before it had a persisted projection (NO_PROJECTION): the projection's store
# keeps nothing (what NullProjectionStore did), so every process folds the whole ledger.
NO_FAST_PATH = r"""
import sys
import snapledger.adapters.checkpoint.fast_show as fast_show
fast_show.stored_show_text = lambda url, vm: None  # before the entry module and the session import it
from snapledger.adapters.cli.entry import main
sys.exit(main(sys.argv[1:]))
"""
NO_PROJECTION = NO_FAST_PATH.replace(
    "from snapledger.adapters.cli.entry import main",
    r"""import snapledger.adapters.checkpoint.persisted as projection
from snapledger.adapters.checkpoint.rules import BEHIND

class NothingKept:
    persistent = False
    def read_current(self, live_only=False): return 0, None, []
    def read_tracking(self): return None
    def read_at(self, position, fingerprint): return None
    def commit(self, update, docs_for): return BEHIND
    def wipe(self, seen): return None
    def close(self): return None

projection.store_for = lambda app: NothingKept()
from snapledger.adapters.cli.entry import main""",
)


def ledger(args: argparse.Namespace) -> tuple[str, int, str]:
    """The store URL, its number of events, and what it is (built first if need be)."""
    if args.store:
        app = LedgerApplication(args.store)
        if not app.last_position():
            print(f"building {args.events:,} events into {args.store}", file=sys.stderr)
            build_into(app, args.events)
        return args.store, app.last_position(), args.store
    db = Path(args.db).resolve()
    if args.fresh:
        db.unlink(missing_ok=True)
    if not db.exists():
        print(f"building {args.events:,} events into {db} (once; cached)", file=sys.stderr)
        build(db, args.events)
    app = LedgerApplication(f"sqlite:///{db}")
    total = app.recorder.max_notification_id() or 0
    return f"sqlite:///{db}", total, f"{db} ({db.stat().st_size / 1e6:.1f} MB)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="/tmp/snapledger-bench-100k.sqlite")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--store", help="a postgresql:// URL: that ledger instead of --db (built if empty)")
    args = parser.parse_args()
    url, total, where = ledger(args)
    cache = tempfile.mkdtemp(prefix="snapledger-pycache-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"SNAPLEDGER_STORE": url, "PYTHONPYCACHEPREFIX": cache}
    vm = "g1-vm0"
    show = [*CLI, "show", vm, "--json"]
    print(f"ledger: {where}, {total:,} events; showing VM {vm}")
    wall, cpu, out = timed(show, env)
    print(f"first show (far from any checkpoint: the VM and the VMs sharing its images, each "
          f"from its own events; else the checkpoint caught up): {wall:,.0f} ms wall ({cpu:,.0f} ms CPU)")
    wall, cpu, _ = timed([*CLI, "list", "--json"], env)
    print(f"then `list` (reads the whole ledger: folds every event if no checkpoint is near, "
          f"and writes the checkpoint): {wall:,.0f} ms wall ({cpu:,.0f} ms CPU)")
    if timed(show, env)[2] != out:
        raise SystemExit("show from the checkpoint printed something else than the first show")
    size = "" if args.store else f"; database now {Path(args.db).resolve().stat().st_size / 1e6:.1f} MB"
    print(f"  output: {len(out):,} bytes of JSON{size}")
    timed(show, env)  # warms the bytecode cache

    base = median_runs([sys.executable, "-c", "pass"], env, args.repeat)
    imp = median_runs([sys.executable, "-c", "import snapledger.adapters.cli.entry"], env, args.repeat)
    whole = median_runs([sys.executable, "-c", "import snapledger.adapters.cli.main"], env, args.repeat)
    fast = median_runs(show, env, args.repeat)
    people = median_runs(show[:-1], env, args.repeat)
    rows = [("python -c pass", base), ("python -c 'import snapledger.adapters.cli.entry'", imp),
            ("python -c 'import snapledger.adapters.cli.main' (all of it)", whole),
            (f"snapledger show {vm} --json", fast), (f"snapledger show {vm} (for people)", people)]
    if args.store:
        for label, script in (("the same, no fast path (checkpoint + catch-up)", NO_FAST_PATH),
                              (f"the same, no persisted projection (folds {total:,} events)",
                               NO_PROJECTION)):
            argv = [sys.executable, "-c", script, "show", vm, "--json"]
            if timed(argv, env)[2] != out:
                raise SystemExit(f"{label}: printed something else")
            rows.append((label, median_runs(argv, env, args.repeat)))
    middle = total // 2 + CHECKPOINT_EVERY - 1
    ats = {}
    for n in (middle, total - 1):
        if 0 < n <= total:
            ats[n] = median_runs([*show, "--at-event", str(n)], env, args.repeat)
            rows.append((f"snapledger show {vm} --json --at-event {n}", ats[n]))
    print(f"medians of {args.repeat} runs (load average before: {os.getloadavg()[0]:.2f}):")
    for label, (w, c, lo, hi) in rows:
        print(f"  {label:55s} {w:7.1f} ms wall ({c:6.1f} ms CPU; {lo:.0f}-{hi:.0f} ms)")
    print(f"  (load average after: {os.getloadavg()[0]:.2f})")
    total_imp, biggest = import_ms(show, env)
    print(f"-X importtime of `show --json`: {total_imp:.1f} ms (self time); by package: "
          + ", ".join(f"{name} {ms:.1f}" for ms, name in biggest))
    split = json.loads(timed([sys.executable, "-c", IN_PROCESS, url, vm], env)[2])
    count = split.pop("rows")
    print(f"in one process (the checkpoint holds {count:,} aggregates):")
    for part, (w, c) in split.items():
        print(f"  {part:40s} {w * 1000:8.1f} ms wall ({c * 1000:7.1f} ms CPU)")
    met = fast[0] <= TARGET_MS
    print(f"RESULT show on {total:,} events: median {fast[0]:.0f} ms wall ({fast[1]:.0f} ms CPU) "
          f"target <= {TARGET_MS:.0f} ms: {'MET' if met else 'MISSED'}")
    for n, (w, c, _, _) in ats.items():
        ok = w <= TARGET_AT_EVENT_MS
        print(f"RESULT show --at-event {n:,}: median {w:.0f} ms wall ({c:.0f} ms CPU) "
              f"target <= {TARGET_AT_EVENT_MS:.0f} ms: {'MET' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
