"""What the command line checks in its arguments before any command runs (click-free: options.py
hooks these into click)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from snapledger.domain.errors import BadInput
from snapledger.domain.names import check_disk_target


def check_text(name: str, values: Iterable[object]) -> None:
    """Arguments must be text. Python hands over bytes that aren't UTF-8 (a file name in
    Latin-1, garbage pasted into --reason) as lone surrogates, which no ledger, JSON document
    or terminal can carry: refuse them (exit 2) before anything is recorded."""
    for value in values:
        if isinstance(value, str) and not is_text(value):
            raise BadInput(f"{name} is not valid UTF-8 text ({_as_bytes(value)}); nothing was done")


def is_text(value: str) -> bool:
    """Valid UTF-8 text (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_bytes(value: str) -> str:
    try:
        return repr(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return ascii(value)


def pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """`vda=PATH` pairs."""
    out: dict[str, str] = {}
    for value in values:
        disk, sep, path = value.partition("=")
        if not sep or not path:
            raise BadInput(f"{option} takes DISK=PATH, got {value!r}")
        check_disk_target(disk)
        if disk in out:
            raise BadInput(f"{option} names disk {disk!r} twice")
        out[disk] = path
    return out


def read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise BadInput(f"can't read {what} {path}: {error.strerror}") from None


REPLAY_COMMANDS = ("show", "tree", "log", "explain", "diff", "list", "export", "usage")
REPLAY_DRY_RUN_COMMANDS = ("delete", "revert", "gc", "snapshot")


def replay_command(args: tuple[str, ...]) -> tuple[int | None, tuple[str, ...]]:
    """replay's `[--until N] COMMAND...`: the position, and a command it may run."""
    until, command = replay_until(args)
    if not command:
        raise BadInput("replay needs a command to run, e.g. `replay FILE show VM`")
    name = command[0]
    if name not in REPLAY_COMMANDS + REPLAY_DRY_RUN_COMMANDS:
        raise BadInput(f"replay runs read-only commands only ({', '.join(REPLAY_COMMANDS)}, or "
                       f"{'/'.join(REPLAY_DRY_RUN_COMMANDS)} --dry-run), not {name!r}")
    if name in REPLAY_DRY_RUN_COMMANDS and "--dry-run" not in command:
        raise BadInput(f"replay runs {name} only with --dry-run")
    return until, command


def replay_until(args: tuple[str, ...]) -> tuple[int | None, tuple[str, ...]]:
    """`--until N` in front of the command is replay's own (`log --until T` is the command's)."""
    if not args or not args[0].startswith("--until"):
        return None, args
    value, rest = (args[0].partition("=")[2], args[1:]) if "=" in args[0] else (
        args[1] if len(args) > 1 else "", args[2:]
    )
    if not value.isdigit() or int(value) <= 0:
        raise BadInput(f"--until takes a ledger position (1 or more), got {value!r}")
    return int(value), rest
