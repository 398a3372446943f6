"""The example systemd units of docs/retention.md (docs/systemd/): valid units (systemd-analyze
verify, where the machine has it; else read key by key), whose command lines the command line
itself accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import click
import pytest

from snapledger.adapters.cli.main import cli

UNITS = Path(__file__).resolve().parents[2] / "docs" / "systemd"
KNOWN = {  # the keys the examples may use, by section
    "Unit": {"Description", "Documentation", "After", "Wants", "Requires"},
    "Service": {"Type", "Environment", "ExecStart", "SuccessExitStatus", "Nice", "IOSchedulingClass", "User"},
    "Timer": {"OnCalendar", "RandomizedDelaySec", "Persistent", "OnBootSec"},
    "Install": {"WantedBy"},
}


def sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = header.group(1)
            found.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{path.name}: {line!r} is not key=value in a section"
        found[current].append((key, value))
    return found


def unparsed(context: click.Context) -> list[str]:
    """The group's arguments left to parse: the command's name and its own (click 8.2 keeps the
    name apart, and warns that it will stop; both ways give the same list)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*getattr(context, "protected_args", []), *context.args]


def test_the_units_are_valid(tmp_path: Path) -> None:
    files = sorted(UNITS.glob("snapledger-rotate@.*"))
    assert [f.suffix for f in files] == [".service", ".timer"]
    for path in files:
        for section, pairs in sections(path).items():
            assert section in KNOWN, f"{path.name}: [{section}]"
            unknown = {k for k, _ in pairs} - KNOWN[section]
            assert not unknown, f"{path.name}: {sorted(unknown)} in [{section}]"
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not on this machine: the units were read key by key only")
    instances = []
    for path in files:  # a template is verified as an instance
        instance = tmp_path / path.name.replace("@.", "@web.")
        instance.write_text(path.read_text())
        instances.append(str(instance))
    done = subprocess.run(["systemd-analyze", "verify", *instances], capture_output=True, text=True)
    assert done.returncode == 0 and "Unknown" not in done.stderr, done.stderr


def test_their_command_lines_are_ones_snapledger_accepts() -> None:
    service = sections(UNITS / "snapledger-rotate@.service")["Service"]
    commands = [shlex.split(value.replace("%i", "web")) for key, value in service if key == "ExecStart"]
    assert [c[:2] for c in commands] == [["/usr/bin/env", "snapledger"]] * 2
    for argv in commands:
        with cli.make_context("snapledger", argv[2:], resilient_parsing=False) as context:
            name, command, rest = cli.resolve_command(context, unparsed(context))
            assert name in ("snapshot", "prune") and command is not None
            with command.make_context(name, rest, parent=context):
                pass  # every option parsed and typed as the command line would


def test_a_bad_command_line_would_be_caught() -> None:
    with cli.make_context("snapledger", ["prune", "web", "--keep-hourly", "x"]) as context:
        name, command, rest = cli.resolve_command(context, unparsed(context))
        assert command is not None
        with pytest.raises(click.BadParameter):
            command.make_context(name, rest, parent=context)
