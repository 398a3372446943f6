"""Imported first by each module of the kit that needs hypothesis: without the `testing` extra,
one clear line instead of a bare `No module named 'hypothesis'` from deep inside the kit."""

from __future__ import annotations

from importlib.util import find_spec

if find_spec("hypothesis") is None:
    raise ModuleNotFoundError(
        "snapledger.testing needs hypothesis, which is not installed: "
        "pip install 'snapledger[testing]'",
        name="hypothesis",
    )
