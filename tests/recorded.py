"""What a ledger recorded, as tests that say "a refusal changes nothing" count it."""

from __future__ import annotations

from typing import Any


def changes(app: Any) -> int:
    """The events recorded, a refusal's record aside: the trail keeps attempts (semantics.md,
    "The trail"), and recording one changes nothing else."""
    return sum(1 for event, _ in app.events_after(0) if type(event).__name__ != "OperationRefused")


def last_type(app: Any) -> str:
    """The type of the last event recorded (its short name)."""
    last = None
    for event, _ in app.events_after(0):
        last = event
    return type(last).__name__
