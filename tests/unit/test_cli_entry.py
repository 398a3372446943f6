"""adapters/cli/entry.py: which arguments it answers from the stored `show` document, and that in
every other case it hands over having printed and created nothing. (That it prints the same bytes
as the full command line: tests/integration/test_show_fast_path.py; that it imports nothing heavy:
test_projection.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from snapledger.adapters.cli import entry
from snapledger.adapters.cli.entry import ShowRequest, answered_from_stored_document, show_request


@pytest.mark.parametrize(
    ("args", "request_"),
    [
        (["show", "web"], ShowRequest(None, "web", False)),
        (["show", "web", "--json"], ShowRequest(None, "web", True)),
        (["--json", "show", "web"], ShowRequest(None, "web", True)),
        (["--json", "show", "web", "--json"], ShowRequest(None, "web", True)),
        (["--store", "sqlite:///l.sqlite", "show", "web"], ShowRequest("sqlite:///l.sqlite", "web", False)),
        (["--store=sqlite:///l.sqlite", "--json", "show", "web"], ShowRequest("sqlite:///l.sqlite", "web", True)),
        (["--json", "--store", "", "show", "web"], ShowRequest("", "web", True)),
        (["--store", "show", "show", "web"], ShowRequest("show", "web", False)),
        (["show", "A.b_c+d-" + "x" * 56], ShowRequest(None, "A.b_c+d-" + "x" * 56, False)),
    ],
)
def test_the_usual_show_is_answered_here(args: list[str], request_: ShowRequest) -> None:
    assert show_request(args) == request_


@pytest.mark.parametrize(
    "args",
    [
        [], ["--json"], ["show"], ["list"], ["--help"], ["--version"], ["show", "--help"], ["show", "web", "-h"],
        ["show", "web", "--reason", "why"], ["--actor", "me", "show", "web"], ["show", "web", "--at-event", "3"],
        ["show", "web", "--json", "--json"], ["--json", "--json", "show", "web"],
        ["--store", "a", "--store", "b", "show", "web"], ["--store", "--json", "show", "web"], ["--store"],
        ["show", "-web"], ["show", ".web"], ["show", "x" * 65], ["show", "w eb"], ["show", "web\udcff"],
        ["show", "web", "extra"], ["replay", "export.jsonl", "show", "web"], ["show", "web", "--"],
    ],
)
def test_any_other_arguments_go_to_the_full_command_line(args: list[str]) -> None:
    assert show_request(args) is None


def test_a_failure_or_doubt_prints_nothing_and_hands_over(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("SNAPLEDGER_STORE", raising=False)
    monkeypatch.delenv("SNAPLEDGER_ACTOR", raising=False)
    assert not answered_from_stored_document(["show", "web", "--json"])  # no store: nothing made
    assert not list(tmp_path.iterdir())

    asked: list[tuple[str, str]] = []

    def stored(url: str, vm: str) -> str:
        asked.append((url, vm))
        return '{"vm": "web"}'

    monkeypatch.setattr(entry, "stored_show_text", stored)
    monkeypatch.setenv("SNAPLEDGER_ACTOR", "b\udcffd")  # the full command line refuses it: exit 2
    assert not answered_from_stored_document(["show", "web", "--json"])
    monkeypatch.delenv("SNAPLEDGER_ACTOR")
    assert not answered_from_stored_document(["--store", "sqlite:///b\udcffd", "show", "web", "--json"])
    assert asked == []

    def broken(url: str, vm: str) -> str:
        raise RuntimeError("anything")

    monkeypatch.setattr(entry, "stored_show_text", broken)
    assert not answered_from_stored_document(["show", "web", "--json"])
    assert capsys.readouterr() == ("", "")

    monkeypatch.setattr(entry, "stored_show_text", stored)
    monkeypatch.setenv("SNAPLEDGER_STORE", "sqlite:////ledger.sqlite")
    assert answered_from_stored_document(["show", "web", "--json"])
    assert asked == [("sqlite:////ledger.sqlite", "web")]
    assert capsys.readouterr() == ('{"vm": "web"}\n', "")


def test_ctrl_c_before_click_runs_is_aborted_as_click_reports_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the stored document is read (a PostgreSQL server that does not answer: up to
    10 s of connect_timeout) is one line and exit 1, as the full command line reports it (click's
    Abort: an empty line, then `snapledger: error: aborted`), never a traceback."""

    def interrupted(url: str, vm: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setenv("SNAPLEDGER_STORE", "sqlite:////ledger.sqlite")
    monkeypatch.delenv("SNAPLEDGER_ACTOR", raising=False)
    monkeypatch.setattr(entry, "stored_show_text", interrupted)
    assert entry.main(["show", "web", "--json"]) == 1
    assert capsys.readouterr() == ("", "\nsnapledger: error: aborted\n")


def test_the_full_command_line_runs_as_a_module_too() -> None:
    """`python -m snapledger.adapters.cli.main ARGS` is the full command line without the entry's
    short cut (as `python -m snapledger.adapters.cli` ran e5a7dc6's cli.py), not a silent exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "snapledger.adapters.cli.main", "show", "--at-event", "x", "web"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("snapledger: error: Invalid value for '--at-event'")


def test_a_long_line_written_to_a_pipe_is_never_broken() -> None:
    """Scripts grep what `verify` and the others print: a finding naming two deep paths is one
    line however long, when stdout is not a terminal."""
    line = "vm: /" + "deep/" * 60 + "image.qcow2: backing file /" + "far/" * 40 + "stray.qcow2 is outside"
    code = f"from snapledger.adapters.cli import output; output.say({line!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    assert done.stdout == line + "\n"
