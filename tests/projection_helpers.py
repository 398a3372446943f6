"""Comparing views exactly: the persisted projection must give back the very aggregates a full
replay builds, types included (a tuple is not a list, an enum member is not its string)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any

from snapledger.adapters.event_store import LedgerApplication
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
