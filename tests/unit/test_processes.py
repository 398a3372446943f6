"""Which process carries out an operation, and whether it still runs (what recover asks)."""

from __future__ import annotations

import subprocess
import sys

from snapledger.adapters.host.processes import LocalProcesses, carrying_out


def test_a_live_process_on_this_host_runs_its_operation() -> None:
    processes = LocalProcesses("here")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runner = {**processes.this_process(), "pid": child.pid}
        runner["started"] = LocalProcesses("here").this_process()["started"]  # ours, not its
        assert processes.running(runner, "op") is False  # a pid reused by another process
        from snapledger.adapters.host import processes as module

        runner["started"] = module._start_ticks(child.pid)
        assert processes.running(runner, "op") is True
    finally:
        child.kill()
        child.wait()
    assert processes.running(runner, "op") is False  # gone


def test_this_process_runs_only_what_it_is_carrying_out_now() -> None:
    processes = LocalProcesses("here")
    me = processes.this_process()
    assert processes.running(me, "op1") is False  # e.g. a crash simulated in this process
    with carrying_out("op1"):
        assert processes.running(me, "op1") is True
        assert processes.running(me, "op2") is False
    assert processes.running(me, "op1") is False


def test_another_host_or_boot_and_no_runner() -> None:
    processes = LocalProcesses("here")
    me = processes.this_process()
    with carrying_out("op"):
        assert processes.running({**me, "host": "there"}, "op") is None  # can't tell from here
        assert processes.running({**me, "boot": "an earlier boot"}, "op") is False
    assert processes.running(None, "op") is False  # recorded before runners were
    assert processes.running({}, "op") is False
