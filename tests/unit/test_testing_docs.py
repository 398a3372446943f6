"""docs/testing.md's tutorial runs: its toy adapter's bug is found by the conformance machine,
with the settings the page gives, so the page can't rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

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


def test_the_incident_snippets_run_as_written(pytester: pytest.Pytester) -> None:
    """The regression-test snippets (```py), pasted into a test module beside an export of a VM
    web1, pass when pytest runs from another directory: their imports are all there and
    `incident.jsonl` is found beside the module."""
    from test_testing_kit_input import a_world
    from test_testing_kit_input import export as exported

    three_lines, after = re.findall(r"```py\n(.*?)```", DOC.read_text(), flags=re.S)
    sub = pytester.mkpydir("regressions")
    (sub / "incident.jsonl").write_text(exported(a_world()))
    (sub / "test_three_lines.py").write_text(three_lines)
    (sub / "test_after.py").write_text(after)
    (sub / "conftest.py").write_text(
        "from hypothesis import settings\n"
        "settings.register_profile('docs', max_examples=3, deadline=None)\n"
        "settings.load_profile('docs')\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", "-q", "regressions")
    result.assert_outcomes(passed=2)
