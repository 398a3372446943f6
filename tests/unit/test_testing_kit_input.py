"""snapledger.testing given what a user gives it: exports as they come from a host (an operation
the host died in, a JSON document instead of JSON lines, a file beside the test); each a correct
replay or one clear error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from snapledger.adapters.eventstore.export import export_jsonl
from snapledger.domain.errors import BadInput
from snapledger.testing import World, replayed
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
