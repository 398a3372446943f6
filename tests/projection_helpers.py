"""Comparing views exactly: the persisted projection must give back the very aggregates a full
replay builds, types included (a tuple is not a list, an enum member is not its string). And a
small history to compare them on, in any store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

import pytest

from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.image_registry import ImageRegistration
from snapledger.projections.view import LedgerView


def typed(value: Any) -> Any:
    """Plain data that keeps every type: equal only if the values are equal and of one type."""
    if isinstance(value, Enum):
        return ("enum", type(value).__qualname__, value.value)
    if is_dataclass(value) and not isinstance(value, type):
        return ("dc", type(value).__qualname__, tuple((f.name, typed(getattr(value, f.name))) for f in fields(value)))
    if isinstance(value, dict):
        return ("dict", tuple((typed(k), typed(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, tuple(sorted((typed(v) for v in value), key=repr)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(typed(v) for v in value))
    return (type(value).__name__, value)


def attributes(aggregate: object) -> dict[str, Any]:
    """An aggregate's attributes, in name order (the order they were set in means nothing;
    the order inside each attribute's dicts does, and is kept)."""
    return {k: v for k, v in sorted(vars(aggregate).items()) if k != "_pending_events"}


def view_state(view: LedgerView) -> Any:
    """Every aggregate (type, id, version and attributes, in view order), the VMs' order, the
    position and where each aggregate was born."""
    aggregates = [
        (type(a).__qualname__, a.id, a.version, typed(attributes(a)))
        for a in view.aggregates().values()
    ]
    return {
        "aggregates": aggregates,
        "vms": list(view.vms),
        "registrations": list(view.registrations),
        "born": list(view.born.items()),
        "position": view.position,
    }


def rebuilt(app: LedgerApplication, stop: int | None = None) -> LedgerView:
    """The view folded from position 0 (up to `stop`)."""
    view = LedgerView()
    view.apply_all(app.events_after(0, stop=stop))
    return view


# ---- a small history in a real store, run as separate processes would ----------------------

EVERY = 3  # archive points close together, so time travel starts from several of them


def open_ledger(url: str, storage: SimulatedStorage, every: int = EVERY) -> Snapledger:
    """A new process on the ledger (and on the one simulated host)."""
    app = LedgerApplication(url)
    return ledger_service(app, storage, projection=PersistedProjection(app, every=every))


def with_history(url: str) -> tuple[Snapledger, SimulatedStorage]:
    """Two VMs, snapshots, guest writes, a revert and a delete; VM a's current is s2."""
    storage = SimulatedStorage()
    storage.make_image("/images/a.qcow2", 16 * CLUSTER, {0: 1})
    storage.make_image("/images/b.qcow2", 16 * CLUSTER, {0: 2})
    ledger = open_ledger(url, storage)
    ledger.adopt("a", {"vda": "/images/a.qcow2"})
    ledger.adopt("b", {"vda": "/images/b.qcow2"})
    for n in range(1, 4):
        ledger.snapshot("a", f"s{n}", description=f"snapshot {n}")
        storage.write(ledger.vm("a").disks["vda"], n, 0x30 + n)
    ledger.snapshot("b", "t1")
    ledger.revert("a", "s2")
    ledger.delete("a", "s1")
    return ledger, storage


CLI = [sys.executable, "-m", "snapledger.adapters.cli"]


def show(url: str, *args: str, report_imports: bool = False) -> subprocess.CompletedProcess[str]:
    """`snapledger show ...` in a process of its own, on the store at `url`; `report_imports`:
    its stderr lists what it imported (`imported_modules`)."""
    env = {**os.environ, "SNAPLEDGER_STORE": url, "COLUMNS": "120"}
    if report_imports:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    done = subprocess.run([*CLI, "show", *args], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


def imported_modules(done: subprocess.CompletedProcess[str]) -> set[str]:
    """The modules a process run with `report_imports` imported (Python's -X importtime lines)."""
    return {
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and not line.endswith("| imported package")
    }


def spy_reads(app: LedgerApplication, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The positions each `events_after` call starts after."""
    starts: list[int] = []
    real = app.events_after

    def events_after(position: int, stop: int | None = None) -> Iterator[Any]:
        starts.append(position)
        return real(position, stop=stop)

    monkeypatch.setattr(app, "events_after", events_after)
    return starts


def live_state(view: LedgerView) -> Any:
    """What a lazy view (a new process's: the checkpoint's live rows, then the events) holds in
    common with the whole fold: every VM and every live registration (by id), the VMs' order
    and the position."""
    aggregates = sorted(
        (
            (type(a).__qualname__, str(a.id), a.version, typed(attributes(a)))
            for a in view.aggregates().values()
            if not isinstance(a, ImageRegistration) or a.live
        ),
        key=lambda entry: entry[1],
    )
    return {"aggregates": aggregates, "vms": list(view.vms), "position": view.position}


def same_ledger(view: LedgerView, whole: LedgerView) -> bool:
    """`view` holds the ledger `whole` (a fold of every event) holds: exactly, for a view that
    holds every aggregate; for a lazy one, every VM and live registration, and every other
    registration when it is looked up."""
    if view.lookup is None:
        return bool(view_state(view) == view_state(whole))
    if live_state(view) != live_state(whole):
        return False
    return all(
        registration in view.registrations_of(registration.path, registration.host or None)
        for registration in whole.registrations.values()
    )
