"""snapledger.testing, as a user meets it: the conformance machine over SimulatedStorage with
nothing added, histories over layouts, the pytest plugin's fixtures (an exported history
replayed, then continued by hypothesis), and a plugin that costs nothing when unused."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapledger.adapters.eventstore.export import export_jsonl
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.testing import ConformanceMachine, World, histories, layouts
from snapledger.testing.strategies import Crash, Disk, Layout, Op

pytest_plugins = ["pytester"]


class SimulatedConformance(ConformanceMachine):
    """What a user writes: one method."""

    def storage_adapter(self) -> SimulatedStorage:
        return SimulatedStorage()


TestSimulatedConformance = SimulatedConformance.TestCase
TestSimulatedConformance.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(max_disks=2), histories(vm="vm", min_ops=6, max_ops=16, disks=("vda", "vdb")))
def test_histories_over_layouts_keep_every_invariant(layout: Layout, ops: list[Op]) -> None:
    world = World()
    world.lay_out(layout)
    world.check()
    world.run(ops)


def exported(world: World) -> str:
    out = io.StringIO()
    export_jsonl(world.app, None, out)
    return out.getvalue()


def a_history() -> World:
    """Two VMs over a template, snapshots, a revert, a commit and a crash after it, recovered."""
    world = World()
    world.lay_out(_layout())
    ops = [
        Op("write", "vm", content={1: 5}), Op("snapshot", "vm"), Op("write", "vm", content={2: 6}),
        Op("snapshot", "vm"), Op("write", "vm", content={1: 7}), Op("snapshot", "vm"),
        Op("revert", "vm", index=1), Op("write", "vm", content={3: 8}),
        Op("delete", "vm", index=0, strategy="commit", crash=Crash(1, after=True)),
        Op("snapshot", "vm-shares0"),
    ]
    outcomes = world.run(ops)
    assert "crashed, recovered" in outcomes, outcomes
    return world


def _layout() -> Layout:
    return Layout("vm", (Disk("vda", {0: 1}, on_template=True), Disk("vdb", {4: 2})), {0: 9, 5: 9},
                  ("vm-shares0",))


def test_an_exported_history_replays_onto_simulated_storage(
    tmp_path: Path, replayed_history: Callable[[str | Path], World]
) -> None:
    """The plugin's fixture: three lines turn an export into a checked state."""
    path = tmp_path / "incident.jsonl"
    path.write_text(exported(a_history()))
    world = replayed_history(path)  # every invariant checked
    assert sorted(world.ledger.view.live_vms()) == ["vm", "vm-shares0"]
    assert len(world.model.snapshots_of("vm")) == 2
    world.run([Op("write", "vm", content={6: 1}), Op("snapshot", "vm"), Op("delete", "vm", index=0)])


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("incident") / "incident.jsonl"
    path.write_text(exported(a_history()))
    return path


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hypothesis_continues_from_a_replayed_state(incident: Path, data: st.DataObject) -> None:
    from snapledger.testing import replayed

    world = replayed(incident)
    world.run(data.draw(histories(vm=None, max_ops=8, starting_from=world)))


def test_the_in_memory_ledger_fixture(simulated_ledger: World) -> None:
    world = simulated_ledger
    world.storage.make_image("/vms/a/vda.qcow2", 12 * 64 * 1024, {0: 1})
    world.ledger.adopt("a", {"vda": "/vms/a/vda.qcow2"})
    world.model.user_file("/vms/a/vda.qcow2", {0: 1})
    world.model.disk("a", "vda", {0: 1})
    world.run([Op("snapshot", "a"), Op("write", "a", content={0: 2}), Op("revert", "a")])
    assert world.storage.read_all(world.ledger.vm("a").disks["vda"]) == {0: 1}


def test_a_replayed_history_that_breaks_an_invariant_fails(tmp_path: Path) -> None:
    """The check is real: a world whose disk no longer reads as modelled is caught."""
    world = a_history()
    active = world.ledger.vm("vm").disks["vda"]
    world.storage.write(active, 11, 0xAB)  # behind the model's back
    with pytest.raises(AssertionError, match="present vm/vda"):
        world.check()


def test_the_plugin_imports_nothing_until_a_fixture_is_used() -> None:
    code = (
        "import sys, snapledger.testing.plugin\n"
        "heavy = [m for m in sys.modules if m.startswith(('hypothesis', 'eventsourcing', "
        "'snapledger.adapters', 'snapledger.domain', 'snapledger.projections'))]\n"
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_the_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "def test_fixture(simulated_ledger):\n    assert simulated_ledger.ledger.view.vms == {}\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", "-q")
    result.assert_outcomes(passed=1)
