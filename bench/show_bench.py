"""Whole-process `snapledger show VM --json` on a 100,000-event SQLite ledger.

    python bench/show_bench.py [--db /tmp/snapledger-bench-100k.sqlite] [--events 100000]
                               [--repeat 7] [--fresh]

The ledger is built once and cached at --db by rebuild_bench.build (many VMs in groups, played
through the real aggregates, planners and SimulatedStorage by _driver.Fleet, saved in batches,
then checked to replay to the driver's state). Each run is a fresh
`python -m snapledger.adapters.cli show VM --json` with SNAPLEDGER_STORE pointing at it; wall
time and the child's CPU time (user + sys, from wait4's rusage) are reported. Then where the time
goes: `python -c pass`, the imports (`-X importtime`), and in one process the ledger open
(which replays every event into the view), `vm()` and the output.

Target: <= 100 ms median.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rebuild_bench import build  # noqa: E402

from snapledger.adapters.event_store import LedgerApplication  # noqa: E402

TARGET_MS = 100.0


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


def median_runs(argv: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    runs = [timed(argv, env)[:2] for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def import_ms(env: dict[str, str]) -> tuple[float, list[tuple[float, str]]]:
    """Total cumulative import time of the CLI module and the biggest top-level packages."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import snapledger.adapters.cli"],
        env=env, capture_output=True, text=True, check=True,
    )
    tops: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        package = m.group(4).split(".")[0]  # self time, summed per top-level package
        tops[package] = tops.get(package, 0) + int(m.group(1)) / 1000
    total = sum(tops.values())
    biggest = sorted(((ms, name) for name, ms in tops.items()), reverse=True)[:10]
    return total, biggest


IN_PROCESS = r"""
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
import snapledger.adapters.cli  # noqa
from snapledger.adapters import output
from snapledger.adapters.compose import open_ledger
t1 = time.perf_counter(); c1 = time.process_time()
ledger = open_ledger()
t2 = time.perf_counter(); c2 = time.process_time()
ledger.vm(sys.argv[1])
t3 = time.perf_counter(); c3 = time.process_time()
text = json.dumps(output.vm_json(ledger.refresh(), sys.argv[1]))
t4 = time.perf_counter(); c4 = time.process_time()
print(json.dumps({"imports": [t1 - t0, c1 - c0], "open_ledger (replay)": [t2 - t1, c2 - c1],
                  "vm() (repository.get)": [t3 - t2, c3 - c2], "output": [t4 - t3, c4 - c3],
                  "events": ledger.view.position}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="/tmp/snapledger-bench-100k.sqlite")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    db = Path(args.db).resolve()
    if args.fresh:
        db.unlink(missing_ok=True)
    if not db.exists():
        print(f"building {args.events:,} events into {db} (once; cached)", file=sys.stderr)
        build(db, args.events)
    app = LedgerApplication(f"sqlite:///{db}")
    total = app.recorder.max_notification_id() or 0
    del app
    env = {**os.environ, "SNAPLEDGER_STORE": f"sqlite:///{db}"}
    vm = "g1-vm0"
    print(f"ledger: {db} ({total:,} events, {db.stat().st_size / 1e6:.1f} MB); showing VM {vm}")
    _, _, out = timed([sys.executable, "-m", "snapledger.adapters.cli", "show", vm, "--json"], env)
    print(f"  output: {len(out):,} bytes of JSON")

    import json

    base_wall, base_cpu = median_runs([sys.executable, "-c", "pass"], env, args.repeat)
    imp_wall, imp_cpu = median_runs([sys.executable, "-c", "import snapledger.adapters.cli"], env, args.repeat)
    show_wall, show_cpu = median_runs(
        [sys.executable, "-m", "snapledger.adapters.cli", "show", vm, "--json"], env, args.repeat
    )
    print(f"python -c pass                        median {base_wall:7.1f} ms wall ({base_cpu:6.1f} ms CPU)")
    print(f"python -c 'import snapledger...cli'   median {imp_wall:7.1f} ms wall ({imp_cpu:6.1f} ms CPU)")
    print(f"snapledger show {vm} --json (x{args.repeat})   median {show_wall:7.1f} ms wall ({show_cpu:6.1f} ms CPU)")
    total_imp, biggest = import_ms(env)
    print(f"-X importtime: all imports {total_imp:.1f} ms (self time); by package: "
          + ", ".join(f"{name} {ms:.1f}" for ms, name in biggest))
    split = json.loads(timed([sys.executable, "-c", IN_PROCESS, vm], env)[2])
    events = split.pop("events")
    print(f"in one process ({events:,} events replayed):")
    for part, (wall, cpu) in split.items():
        print(f"  {part:24s} {wall * 1000:8.1f} ms wall ({cpu * 1000:7.1f} ms CPU)")
    print(
        f"RESULT show on {total:,} events: median {show_wall:.0f} ms wall ({show_cpu:.0f} ms CPU) "
        f"target <= {TARGET_MS:.0f} ms: {'MET' if show_wall <= TARGET_MS else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
