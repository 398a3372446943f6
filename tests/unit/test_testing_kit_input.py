"""snapledger.testing given what a user gives it: exports as they come from a host (an operation
the host died in, a JSON document instead of JSON lines, a file beside the test), out-of-range
arguments to the strategies, and no hypothesis installed; each a correct replay or one clear
error."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis.errors import InvalidArgument

from snapledger.adapters.eventstore.export import export_jsonl
from snapledger.domain.errors import BadInput
from snapledger.testing import World, histories, layouts, replayed
from snapledger.testing.strategies import Disk, Layout, Op

pytest_plugins = ["pytester"]


def export(world: World) -> str:
    out = io.StringIO()
    export_jsonl(world.app, None, out)
    return out.getvalue()


def a_world() -> World:
    world = World()
    world.lay_out(Layout("web1", (Disk("vda", {0: 1}),), {0: 9, 5: 9}))
    world.run([Op("snapshot", "web1"), Op("write", "web1", content={1: 2}), Op("snapshot", "web1"),
               Op("write", "web1", content={2: 3})])
    return world


@pytest.mark.parametrize("kind", ["snapshot", "revert", "delete"])
def test_an_export_the_host_died_in_replays_recovered(tmp_path: Path, kind: str) -> None:
    """The export of a crash is the incident: its open operation is recovered on the simulation
    and every snapshot and present read as before (it was: OperationInProgress, 'run recover')."""
    world = a_world()
    world.port.inject(crash_at=1, after=True)
    with pytest.raises(BaseException, match="injected crash"):
        if kind == "snapshot":
            world.ledger.snapshot("web1", "s9")
        elif kind == "revert":
            world.ledger.revert("web1", "h1")
        else:
            world.ledger.delete("web1", "h1", "auto", "forbid")
    assert world.ledger.refresh().vms["web1"].operation is not None
    path = tmp_path / "crash.jsonl"
    path.write_text(export(world))
    again = replayed(path)
    assert again.outcomes == [f"web1: unfinished {kind} recovered"]
    names = sorted(again.ledger.view.vms["web1"].snapshots)
    assert names == {"snapshot": ["h1", "h2", "s9"], "revert": ["h1", "h2"], "delete": ["h2"]}[kind]
    again.run([Op("snapshot", "web1"), Op("delete", "web1", index=0)])


def test_a_json_document_is_named_as_such(tmp_path: Path) -> None:
    lines = export(a_world()).splitlines()
    path = tmp_path / "export.json"
    path.write_text(json.dumps([json.loads(line) for line in lines], indent=2))
    with pytest.raises(BadInput, match=r"line 1\) .* not a snapledger export header \(JSON lines"):
        replayed(path)


@pytest.mark.parametrize(("make", "says"), [
    (lambda: histories(min_ops=5, max_ops=2), r"histories\(min_ops=5, max_ops=2\)"),
    (lambda: histories(max_ops=-1), r"max_ops=-1"),
    (lambda: histories(vm=""), r"histories\(vm=''\): bad VM name"),
    (lambda: histories(vm="web 1"), r"bad VM name 'web 1'"),
    (lambda: histories(vm=None), r"vm=None\) means any VM of `starting_from`"),
    (lambda: histories(disks=()), r"at least one disk"),
    (lambda: histories(disks=("VDA",)), r"disks=\('VDA',\)"),
    (lambda: histories(vm="x", starting_from=World()), r"no such live VM .*: none"),
    (lambda: layouts(max_disks=0), r"1 to 26 disks"),
    (lambda: layouts(max_disks=27), r"1 to 26 disks"),
    (lambda: layouts(vm="-x"), r"layouts\(vm='-x'\)"),
    (lambda: layouts(max_sharing=-1), r"max_sharing=-1"),
    (lambda: layouts(vm="v" * 60), r"shares0"),
])
def test_strategy_arguments_out_of_range_are_refused_when_given(make: Any, says: str) -> None:
    """At the call, in the caller's words (not hypothesis' max_size, a 'vd{' disk or a BadPath
    from inside a history)."""
    with pytest.raises(InvalidArgument, match=says):
        make()


def test_without_hypothesis_the_kit_says_which_extra_to_install() -> None:
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import snapledger.testing.plugin\n"  # loaded by pytest: still fine
            "from snapledger.testing import ConformanceMachine")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ModuleNotFoundError: snapledger.testing needs hypothesis" in done.stderr
    assert "pip install 'snapledger[testing]'" in done.stderr


def test_a_relative_export_is_found_beside_the_test(pytester: pytest.Pytester) -> None:
    """Run from elsewhere (a CI job's checkout root), `replayed_history("incident.jsonl")` finds the
    file next to the test; a missing one says where it looked."""
    sub = pytester.mkpydir("regressions")
    (sub / "incident.jsonl").write_text(export(a_world()))
    (sub / "test_incident.py").write_text(
        "def test_it(replayed_history):\n    replayed_history('incident.jsonl')\n\n"
        "def test_missing(replayed_history):\n    replayed_history('gone.jsonl')\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", "-q", "regressions")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FileNotFoundError: no exported history at 'gone.jsonl'*beside the test*"])
