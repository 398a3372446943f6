"""docs/testing.md's tutorial runs: its toy adapter's bug is found by the conformance machine,
with the settings the page gives, so the page can't rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_tutorials_bug_is_found() -> None:
    adapter, run = python_blocks()
    namespace: dict[str, object] = {"__name__": "tutorial"}
    exec(compile(adapter, f"{DOC}:adapter", "exec"), namespace)
    with pytest.raises(AssertionError, match=r"reads \{.*\}, not \{"):
        exec(compile(run, f"{DOC}:run", "exec"), namespace)


def test_without_the_bug_the_same_run_passes() -> None:
    """The machine finds the bug, not something else: the same run over the simulation passes."""
    adapter, run = python_blocks()
    namespace: dict[str, object] = {"__name__": "tutorial"}
    exec(compile(adapter, f"{DOC}:adapter", "exec"), namespace)
    storage = namespace["OffByOneStorage"]
    del storage.commit  # type: ignore[attr-defined]
    exec(compile(run.replace("max_examples=500", "max_examples=8"), f"{DOC}:run", "exec"), namespace)
