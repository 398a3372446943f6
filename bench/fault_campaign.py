"""Fault campaign: random real histories with faults, checked byte by byte.

    sudo .venv/bin/python bench/fault_campaign.py [--histories N] [--jobs J] [--seed S0]
                                                 [--out results.json] [--dir SCRATCH] [--keep]

History i is drawn from seed S0 + i (`--seed S` alone runs exactly that history again; a kill
lands at a moment measured in wall time, so a history with a kill -9 replays the same steps
but not always the same instant). Each runs the real `snapledger` command on small real
qcow2/raw images in its own scratch directory, with its own SQLite ledger, injects faults
(kill -9, ENOSPC for images and for the ledger, users' overlays and hard links, an image held
open, a qcow2 header in a raw disk, a file gone for a while, qemu-img missing), runs
`snapledger recover`, and reads every snapshot, every present and every file someone else
made back with qemu-io against the campaign's own model of the bytes.

Root is needed (tmpfs mounts). Not part of the test suite: see docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign_history import run_history  # noqa: E402
from campaign_model import HistoryResult  # noqa: E402
from campaign_world import Scratch, path_without, snapledger_command, sweep  # noqa: E402


def installed_features() -> dict[str, bool]:
    """Optional commands and forms the installed snapledger offers (the product is moving)."""
    main = subprocess.run([*snapledger_command(), "--help"], capture_output=True, text=True,
                          check=False).stdout
    snapshot = subprocess.run([*snapledger_command(), "snapshot", "--help"], capture_output=True,
                              text=True, check=False).stdout
    commands = {line.split()[0] for line in main.splitlines() if line.startswith("  ") and line.split()}
    return {
        "reconcile": "reconcile" in commands,
        "retire": "retire" in commands,
        "unnamed-snapshot": "VM [NAME]" in snapshot,
    }


class Campaign:
    def __init__(self, scratch_root: Path, supports: dict[str, bool]) -> None:
        self.scratch_root = scratch_root
        self.registry = scratch_root / "registry"
        self.nobin = path_without("qemu-img", scratch_root / "nobin")
        self.supports = supports

    def one(self, seed: int) -> HistoryResult:
        scratch = Scratch(self.scratch_root / f"h{seed}", self.registry)
        try:
            return run_history(seed, scratch, self.nobin, self.supports)
        finally:
            scratch.close()


_campaign: Campaign | None = None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interruptible() -> None:
    """Ctrl-C and SIGTERM end the campaign through its clean-up (even when started in the
    background by a shell, which would have SIGINT ignored)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _worker_init(campaign: Campaign) -> None:
    global _campaign
    _campaign = campaign
    _interruptible()


def _worker_run(seed: int) -> HistoryResult:
    assert _campaign is not None
    return _campaign.one(seed)


def report_line(result: HistoryResult) -> str:
    found = [v for v in result.violations]
    status = "ok" if not found else ", ".join(sorted({f"{v.category}: {v.kind}" for v in found}))
    faults = ",".join(f"{k}x{n}" for k, n in sorted(result.faults.items())) or "no faults"
    return f"seed {result.seed}: {result.seconds:5.1f} s, {result.operations} steps, {faults}: {status}"


def summarise(results: list[HistoryResult], wall: float, seeds: list[int], interrupted: bool) -> dict[str, Any]:
    faults: Counter[str] = Counter()
    by_kind: dict[str, dict[str, Any]] = {}
    for result in results:
        faults.update(result.faults)
        for v in result.violations:
            entry = by_kind.setdefault(f"{v.category}: {v.kind}",
                                       {"category": v.category, "kind": v.kind, "count": 0, "seeds": []})
            entry["count"] += 1
            if v.seed not in entry["seeds"]:
                entry["seeds"].append(v.seed)
    seconds = [r.seconds for r in results]
    return {
        "histories_planned": len(seeds),
        "histories_run": len(results),
        "interrupted": interrupted,
        "seeds": [seeds[0], seeds[-1]] if seeds else [],
        "operations_run": sum(r.operations for r in results),
        "snapledger_commands": sum(r.commands for r in results),
        "faults_injected": dict(sorted(faults.items())),
        "recoveries_run": sum(r.recoveries for r in results),
        "bytes_checked": sum(r.bytes_read for r in results),
        "bytes_vouched_unchanged": sum(r.bytes_vouched for r in results),
        "data_lost": sum(1 for r in results for v in r.violations if v.category == "data lost"),
        "histories_with_data_lost": sorted({r.seed for r in results for v in r.violations
                                            if v.category == "data lost"}),
        "contract_violations": sum(1 for r in results for v in r.violations
                                   if v.category == "contract broken"),
        "campaign_errors": sum(1 for r in results for v in r.violations
                               if v.category == "campaign error"),
        "findings_by_kind": dict(sorted(by_kind.items())),
        "wall_time_s": round(wall, 1),
        "seconds_per_history": {
            "mean": round(statistics.mean(seconds), 1) if seconds else 0,
            "median": round(statistics.median(seconds), 1) if seconds else 0,
            "max": round(max(seconds), 1) if seconds else 0,
        },
        "violations": [v.to_json() for r in results for v in r.violations],
    }


def human_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"histories run: {summary['histories_run']} of {summary['histories_planned']}"
        + (" (interrupted)" if summary["interrupted"] else ""),
        f"operations run: {summary['operations_run']} ({summary['snapledger_commands']} snapledger commands)",
        "faults injected: " + (", ".join(f"{k} {n}" for k, n in summary["faults_injected"].items()) or "none"),
        f"recoveries run: {summary['recoveries_run']}",
        f"bytes checked with qemu-io: {summary['bytes_checked'] / (1 << 20):.0f} MiB "
        f"(+{summary['bytes_vouched_unchanged'] / (1 << 20):.0f} MiB whose chains had not changed)",
        f"data lost: {summary['data_lost']} (histories {summary['histories_with_data_lost']})",
        f"contract violations: {summary['contract_violations']}; campaign errors: {summary['campaign_errors']}",
    ]
    for name, entry in summary["findings_by_kind"].items():
        lines.append(f"  {name}: {entry['count']} (seeds {entry['seeds'][:12]})")
    per = summary["seconds_per_history"]
    lines.append(f"wall time: {summary['wall_time_s']} s; per history mean {per['mean']} s, "
                 f"median {per['median']} s, max {per['max']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--histories", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="seed of the first history (S0)")
    parser.add_argument("--out", type=Path, default=None, help="JSON summary to write")
    parser.add_argument("--dir", type=Path, default=None, help="scratch root (default /tmp/...)")
    parser.add_argument("--verbose", action="store_true", help="print every history's steps")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the campaign mounts small tmpfs filesystems")
    scratch_root = (args.dir or Path(f"/tmp/snapledger-campaign-{os.getpid()}")).resolve()
    if scratch_root.exists() and any(scratch_root.iterdir()):
        parser.error(f"{scratch_root} is not empty")
    scratch_root.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.histories))
    results: list[HistoryResult] = []
    started = time.monotonic()
    _interruptible()
    interrupted = False
    try:
        campaign = Campaign(scratch_root, installed_features())
        print(f"snapledger offers: {campaign.supports}", flush=True)
        if args.jobs <= 1:
            _worker_init(campaign)
            for seed in seeds:
                results.append(_worker_run(seed))
                print(report_line(results[-1]), flush=True)
                if args.verbose:
                    print("  setup: " + results[-1].setup + "\n  " + "\n  ".join(results[-1].steps))
        else:
            with multiprocessing.get_context("fork").Pool(args.jobs, _worker_init, (campaign,)) as pool:
                try:
                    for result in pool.imap_unordered(_worker_run, seeds):
                        results.append(result)
                        print(report_line(result), flush=True)
                        if args.verbose:
                            print("  setup: " + result.setup + "\n  " + "\n  ".join(result.steps))
                    # Idle workers end on their own: leaving the block would SIGTERM them, and
                    # their handler would print a traceback on the way out.
                    pool.close()
                    pool.join()
                except KeyboardInterrupt:
                    pool.terminate()
                    raise
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: cleaning up", file=sys.stderr)
    finally:
        sweep(scratch_root, scratch_root / "registry")
    results.sort(key=lambda r: r.seed)
    summary = summarise(results, time.monotonic() - started, seeds, interrupted)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(human_summary(summary))
    for v in summary["violations"]:
        print(f"  seed {v['seed']} step {v['step']}: {v['category']}: {v['kind']}: {v['detail'][:300]}"
              + (f"\n      command: {' '.join(v['command'])} -> {v['exit_code']}: {v['stderr'].strip()[:300]}"
                 if v["command"] else ""))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
