"""snapledger.testing against a user's own storage adapter: the port's contract is held with an
AssertionError naming the call that broke it (an exception that is not a StorageError, a delete
that leaves the file, an overlay or a pull that does not rest on what it was asked), and a World's
swap works for any VM's directories and disk size."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.testing import ConformanceMachine, FaultyPort, World
from snapledger.testing.strategies import Op

SIZE = 12 * 64 * 1024


class Wrapped:
    """A third adapter, not a SimulatedStorage: every call goes to one held inside."""

    def __init__(self) -> None:
        self.sim = SimulatedStorage()
        self.root = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sim, name)


class RaisesOSError(Wrapped):
    def commit(self, top: str, base: str, *, fmt: str) -> None:
        raise OSError(5, "Input/output error", top)


class DeleteKeeps(Wrapped):
    def delete(self, path: str) -> None:
        """Says it deleted; did not."""


class NoBackingFormat(Wrapped):
    def create_overlay(self, path: str, backing: str, backing_format: str, virtual_size: int) -> None:
        self.sim.create_overlay(path, backing, backing_format, virtual_size)
        self.sim.files[path].backing_format = None  # as `qemu-img create -b` without -F


class PullKeepsBacking(Wrapped):
    def pull(self, image: str, new_backing: str | None, new_backing_format: str | None, *,
             fmt: str) -> None:
        """Copies the data, forgets to re-point the image."""
        backing = self.sim.files[image].backing
        self.sim.pull(image, new_backing, new_backing_format, fmt=fmt)
        self.sim.files[image].backing = backing


def a_port(adapter: Wrapped) -> FaultyPort:
    adapter.make_image("/vms/a/vda.qcow2", SIZE, {0: 1})
    return FaultyPort(adapter)  # type: ignore[arg-type]


def test_an_exception_outside_the_ports_contract_is_named() -> None:
    port = a_port(RaisesOSError())
    with pytest.raises(AssertionError, match=r"commit\('/vms/a/vda.s1', .*raised OSError.*StorageError"):
        port.commit("/vms/a/vda.s1", "/vms/a/vda.qcow2", fmt="qcow2")


def test_a_delete_that_leaves_the_file_is_named() -> None:
    port = a_port(DeleteKeeps())
    with pytest.raises(AssertionError, match=r"delete\('/vms/a/vda.qcow2'\) returned, but the file is still there"):
        port.delete("/vms/a/vda.qcow2")


def test_an_overlay_without_its_backing_format_is_named() -> None:
    port = a_port(NoBackingFormat())
    with pytest.raises(AssertionError, match=r"create_overlay.*\(format None\), not '/vms/a/vda.qcow2' \(format 'qcow2'\)"):
        port.create_overlay("/vms/a/vda.s1", "/vms/a/vda.qcow2", "qcow2", SIZE)


def test_a_pull_that_keeps_the_old_backing_is_named() -> None:
    adapter = PullKeepsBacking()
    port = a_port(adapter)
    port.create_overlay("/vms/a/vda.s1", "/vms/a/vda.qcow2", "qcow2", SIZE)
    with pytest.raises(AssertionError, match=r"pull\('/vms/a/vda.s1', None, None\) left .* backed by '/vms/a/vda.qcow2'"):
        port.pull("/vms/a/vda.s1", None, None, fmt="qcow2")


def test_a_correct_third_adapter_passes_the_same_checks() -> None:
    port = a_port(Wrapped())
    port.create_overlay("/vms/a/vda.s1", "/vms/a/vda.qcow2", "qcow2", SIZE)
    port.pull("/vms/a/vda.s1", None, None, fmt="qcow2")
    port.delete("/vms/a/vda.qcow2")
    assert port.inspect("/vms/a/vda.s1").backing is None


def test_the_machine_says_a_delete_did_not_delete() -> None:
    """Not `... is an orphan file` about a file the machine made itself, after a gc."""

    class Conformance(ConformanceMachine):
        def storage_adapter(self) -> Any:
            return DeleteKeeps()

    fast = settings(max_examples=300, stateful_step_count=25, deadline=None, derandomize=True,
                    database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    with pytest.raises(AssertionError, match=r"delete\(.*\) (left the file|returned, but the file is still there)"):
        run_state_machine_as_test(Conformance, settings=fast)


def adopted(path: str, size: int, content: dict[int, int]) -> World:
    world = World()
    world.storage.make_image(path, size, content)
    world.ledger.adopt("web1", {"vda": path})
    world.model.user_file(path, content)
    world.model.disk("web1", "vda", content)
    return world


def test_a_swap_goes_beside_the_disk_not_under_vms() -> None:
    """A VM whose disks are elsewhere (a replayed one's are where production had them) may swap."""
    world = adopted("/srv/images/web1/vda.qcow2", SIZE, {0: 1})
    assert world.run([Op("snapshot", "web1"), Op("swap", "web1", content={1: 2}, flag=True)])[-1] == "swapped"


def test_a_swap_over_a_snapshot_of_a_bigger_disk_reads_all_of_it() -> None:
    """The swapped-in overlay is the disk's size: 12 clusters over a 4 MiB disk hid cluster 20."""
    world = adopted("/vms/web1/vda.qcow2", 64 * 64 * 1024, {20: 7})
    world.run([Op("snapshot", "web1"), Op("swap", "web1", content={1: 2}, flag=True)])
    assert world.storage.read_all(world.ledger.vm("web1").disks["vda"]) == {1: 2, 20: 7}


def test_an_op_on_a_vm_the_ledger_never_knew_is_an_error() -> None:
    """A typo in a VM's name would make every step 'no such VM' and the test pass, vacuously."""
    world = adopted("/vms/web1/vda.qcow2", SIZE, {0: 1})
    with pytest.raises(ValueError, match=r"no VM 'web2' \(it has web1\)"):
        world.run([Op("snapshot", "web2")])
