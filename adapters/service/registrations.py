"""Image registrations: who uses each file, and which operation has reserved it.

Functions over a Registry (where one VM's home host finds and makes registrations), so that the
service (which loads them from the store) and the benchmark driver (which keeps them in memory)
claim, reserve and release the same way. The registrations returned are saved with the VM's
events in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from snapledger.domain.errors import ConcurrentUpdate
from snapledger.domain.image_registry import ImageRegistration, release_registrations
from snapledger.domain.steps import CreateOverlay, Step, touched_paths
from snapledger.domain.vm import OperationRecord


@dataclass(frozen=True)
class Registry:
    """The registrations as one VM's home host sees them: `find` loads the registration of a
    path (its own file, or the one file on shared storage), `owner` names the host a new
    registration of a path belongs to ("" for a file on shared storage, one for every host)."""

    find: Callable[[str], ImageRegistration | None]
    owner: Callable[[str], str]

    def new(self, path: str, vm_name: str) -> ImageRegistration:
        return ImageRegistration(path=path, vm=vm_name, host=self.owner(path))


def claimed(registry: Registry, path: str, vm_name: str) -> ImageRegistration:
    """`path` used by `vm_name` from now on (its first use makes the registration)."""
    registration = registry.find(path)
    if registration is None:
        return registry.new(path, vm_name)
    registration.add_user(vm_name)
    return registration


def reserved(
    registry: Registry, vm_name: str, op_id: str, steps: tuple[Step, ...]
) -> list[ImageRegistration]:
    """Every overlay the steps create registered, every file a destructive step touches reserved
    by the operation `op_id`; refused (ConcurrentUpdate) if another operation got there first."""
    out: dict[str, ImageRegistration] = {}
    for step in steps:
        if isinstance(step, CreateOverlay):
            if registry.find(step.path) is not None:
                raise ConcurrentUpdate(f"{step.path} was registered by another operation")
            out[step.path] = registry.new(step.path, vm_name)
        elif step.destructive:
            for path in touched_paths(step):
                registration = out.get(path) or registry.find(path)
                if registration is None:
                    registration = registry.new(path, vm_name)
                registration.reserve_change(vm_name, op_id)
                out[path] = registration
    return list(out.values())


def released(
    registry: Registry, vm_name: str, op: OperationRecord, gone: Mapping[str, bool]
) -> list[ImageRegistration]:
    """The reservations of `op` ended; the files in `gone` no longer used by `vm_name`."""
    touched = {p for s in op.steps for p in touched_paths(s)}
    return release_registrations(registry.find, vm_name, op.op_id, touched, gone)
