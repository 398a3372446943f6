"""Whole `snapledger` processes on a tiny VM: what a command costs before it does any work.

    python bench/cli_startup_bench.py [--other /path/to/an/older/venv/bin/snapledger] [--rounds 11]

One 16 MiB qcow2 disk is adopted into a fresh SQLite ledger per executable; then, round after
round (the executables interleaved, so load changes hit both alike), `--version`, `list --json`,
`snapshot vm sN`, `show vm --json` and `delete vm sN` run as whole processes. The bytecode cache
is on (PYTHONPYCACHEPREFIX in a scratch folder, warmed first), as an installed package has it.
Medians in ms. `--other` names another installation's `snapledger` (a checkout of an older
commit with its own virtualenv) to compare with in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("--version", "list --json", "snapshot", "show --json", "delete")


def timed(executable: str, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([executable, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{executable} {' '.join(args)}: {done.stderr.strip()}")
    return (time.perf_counter() - started) * 1000


def prepared(executable: str, cache: str) -> dict[str, str]:
    """The environment of a fresh ledger holding VM `vm`, for `executable`."""
    work = Path(tempfile.mkdtemp(prefix="snapledger-startup-"))
    disk = work / "vm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"SNAPLEDGER_STORE": f"sqlite:///{work}/ledger.sqlite", "PYTHONPYCACHEPREFIX": cache}
    timed(executable, ["adopt", "vm", "--disk", f"vda={disk}"], env)
    timed(executable, ["--version"], env)  # warms the bytecode cache
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", help="another installation's snapledger executable")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    executables = {"this tree": str(Path(sys.executable).with_name("snapledger"))}
    if args.other:
        executables["other"] = args.other
    envs = {label: prepared(exe, tempfile.mkdtemp(prefix=f"pycache-{i}-"))
            for i, (label, exe) in enumerate(executables.items())}
    runs: dict[str, dict[str, list[float]]] = {label: {c: [] for c in COMMANDS} for label in executables}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for n in range(args.rounds):
        for label, exe in executables.items():
            env, times = envs[label], runs[label]
            times["--version"].append(timed(exe, ["--version"], env))
            times["list --json"].append(timed(exe, ["list", "--json"], env))
            times["snapshot"].append(timed(exe, ["snapshot", "vm", f"s{n}"], env))
            times["show --json"].append(timed(exe, ["show", "vm", "--json"], env))
            times["delete"].append(timed(exe, ["delete", "vm", f"s{n}"], env))
    print(f"load average after: {os.getloadavg()[0]:.2f}; medians of {args.rounds} rounds:")
    for label, times in runs.items():
        cells = ", ".join(f"{c} {statistics.median(v):.0f} ms" for c, v in times.items())
        print(f"  {label:10s} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
