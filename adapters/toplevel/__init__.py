"""snapledger: the tamper-evident history of external VM disk snapshots.

`import snapledger` costs nothing: `open` and `Ledger` (the Python API, adapters/api.py, see
docs/api.md) and `__version__` are looked up when first asked for, so the console script, which
imports this package before anything else, does not pay for them.

This file is the package `snapledger` itself (pyproject.toml maps it here, as it maps
snapledger.domain to domain/): the top level of the checkout is fixed, and the package holds
nothing else. See docs/decisions.md, "One import package".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapledger.adapters.api import Ledger, open

__all__ = ["Ledger", "__version__", "open"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from snapledger.adapters.version import VERSION

        return VERSION
    if name in ("open", "Ledger"):
        from snapledger.adapters import api

        return getattr(api, name)
    raise AttributeError(f"module 'snapledger' has no attribute {name!r}")
