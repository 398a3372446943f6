"""snapledger.testing: the byte model, hypothesis strategies, the conformance machine and pytest
fixtures, for users' own tests (install `snapledger[testing]`; docs/testing.md).

Importing this package costs nothing: each name is looked up when first asked for, so the pytest
plugin (plugin.py), loaded into every test run once installed, imports hypothesis and snapledger
only in a test that uses one of its fixtures.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapledger.testing.faults import FaultyPort, SimulatedCrash
    from snapledger.testing.machine import ConformanceMachine
    from snapledger.testing.model import ByteModel, ByteStorage, Content, SnapRef, over
    from snapledger.testing.strategies import Layout, Op, histories, layouts
    from snapledger.testing.world import World, replayed

_WHERE = {
    "ByteModel": "model", "ByteStorage": "model", "Content": "model", "SnapRef": "model",
    "over": "model", "FaultyPort": "faults", "SimulatedCrash": "faults",
    "ConformanceMachine": "machine", "Layout": "strategies", "Op": "strategies",
    "histories": "strategies", "layouts": "strategies", "World": "world", "replayed": "world",
}
__all__ = [
    "ByteModel", "ByteStorage", "ConformanceMachine", "Content", "FaultyPort", "Layout", "Op",
    "SimulatedCrash", "SnapRef", "World", "histories", "layouts", "over", "replayed",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"snapledger.testing.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'snapledger.testing' has no attribute {name!r}")
