"""How the service records: each changing command is an operation (its events carry its id,
semantics.md "The trail"), a refusal is kept as an attempt, and every command ends by bringing
the persisted projection up to date."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from snapledger.adapters.service import recovery
from snapledger.domain.errors import LedgerDamaged, Refused, SnapledgerError, TamperFound

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger

_P = ParamSpec("_P")
_R = TypeVar("_R")


def operation(
    kind: str, target: str | None = None, vm: str = "vm_name"
) -> Callable[[Callable[Concatenate[Snapledger, _P], _R]], Callable[Concatenate[Snapledger, _P], _R]]:
    """A command that changes the ledger: one operation (semantics.md, "The trail"). The events
    it records carry a new operation id; a refusal (exit 3) of a real run is recorded too, with
    who, where and why. `target`, `vm`: the parameters naming what it acts on."""

    def wrap(command: Callable[Concatenate[Snapledger, _P], _R]) -> Callable[Concatenate[Snapledger, _P], _R]:
        signature = inspect.signature(command)

        def run(self: Snapledger, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            enclosing = self.app.operation  # prune's deletions are operations of their own
            self.next_operation()
            try:
                return command(self, *args, **kwargs)
            except Refused as refused:
                bound = signature.bind(self, *args, **kwargs).arguments
                if not bound.get("dry_run"):
                    named = bound.get(target) if target is not None else None
                    record_refusal(self, kind, bound.get(vm), None if named is None else str(named), refused)
                raise
            finally:
                self.app.continue_operation(enclosing)

        functools.update_wrapper(run, command)
        return checkpointed(run)

    return wrap


def checkpointed(
    command: Callable[Concatenate[Snapledger, _P], _R],
) -> Callable[Concatenate[Snapledger, _P], _R]:
    """A command ends by bringing the persisted projection up to date, also when it fails
    part way (what it saved is folded in)."""

    def run(self: Snapledger, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(self, *args, **kwargs)
        finally:
            self.checkpoint()

    functools.update_wrapper(run, command)
    return run


def record_refusal(
    ledger: Snapledger, kind: str, vm_name: object, target: str | None, refused: Refused
) -> None:
    """Keep the attempt in the trail: on the VM, if it lives here (another host's VM is
    not ours to write, and a write could make its own operation fail). Best effort: the
    refusal is what the user hears, whatever happens here."""
    if getattr(refused, "recorded", False) or isinstance(refused, (LedgerDamaged, TamperFound)) or not isinstance(vm_name, str):
        return
    refused.recorded = True  # type: ignore[attr-defined]  # an enclosing operation's too
    unrecordable: tuple[type[BaseException], ...] = (SnapledgerError, *ledger.app.errors)
    try:
        vm = ledger.vm(vm_name)
        if ledger.host is not None and not vm.lives_on(ledger.host):
            return
        if vm.operation is not None and recovery.still_running(ledger.runners, vm.operation, vm.taken_over_from):
            return  # its runner's next record must not meet ours
        vm.record_refusal(kind, target, " ".join(str(refused).split()), ledger.clock())
        ledger.save(vm)
    except unrecordable:
        pass
