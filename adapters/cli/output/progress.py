"""How a long merge goes, on stderr (the MergeListener port, adapters/service/ports.py)."""

from __future__ import annotations

import os.path
import time
from collections.abc import Callable
from typing import Any

from rich import filesize
from rich.console import Console

from snapledger.adapters.cli.visible import visible


class MergeProgress:
    """How a long merge goes (commit, pull), told by the storage adapter running it (the
    MergeListener port, adapters/service/ports.py), always on stderr: stdout stays the command's
    answer (--json). Nothing for a merge done within a second. On a terminal, a rich progress
    line: the step, the files, the bytes, the rate and the time left. Elsewhere (cron, a log), a
    plain line each time another 10% is done or 10 s have passed since the last one, whichever
    comes first, and one when it ends."""

    QUIET_SECONDS = 1.0
    EVERY_FRACTION = 0.1
    EVERY_SECONDS = 10.0

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console  # None: stderr's, made when a merge first needs it
        self._clock = clock
        self._merge: tuple[str, str, str, int] | None = None  # step, source, target, total bytes
        self._started = self._fraction = 0.0
        self._said_at = self._said_fraction = 0.0
        self._said = False
        self._bar: Any = None  # rich's Progress, made once a merge has run a second
        self._task: Any = None

    def started(self, step: str, source: str, target: str, total_bytes: int) -> None:
        self.finished()
        self._merge = (step, source, target, max(total_bytes, 0))
        self._started = self._said_at = self._clock()
        self._fraction = self._said_fraction = 0.0
        self._said = False

    def advanced(self, fraction: float) -> None:
        if self._merge is None:
            return
        self._fraction = fraction = min(max(fraction, self._fraction), 1.0)
        now = self._clock()
        if now - self._started < self.QUIET_SECONDS or fraction >= 1.0:
            return
        if self._out().is_terminal:
            self._draw(fraction)
            return
        crossed = int(fraction / self.EVERY_FRACTION + 1e-9) > int(self._said_fraction / self.EVERY_FRACTION + 1e-9)
        if crossed or now - self._said_at >= self.EVERY_SECONDS:
            self._say(f"{fraction:.0%} ({self._amounts(now)})")
            self._said_at, self._said_fraction, self._said = now, fraction, True

    def finished(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None
        if self._merge is not None and self._said:
            elapsed = self._clock() - self._started
            if self._fraction >= 1.0:
                total = self._merge[3]
                moved = f"{filesize.decimal(total)} in " if total else ""
                rate = f", {filesize.decimal(int(total / elapsed))}/s" if total and elapsed > 0 else ""
                self._say(f"done, {moved}{_seconds(elapsed)}{rate}")
            else:
                self._say(f"stopped at {self._fraction:.0%} after {_seconds(elapsed)}")
        self._merge = None

    def _out(self) -> Console:
        if self._console is None:
            self._console = Console(stderr=True, highlight=False)
        return self._console

    def _say(self, what: str) -> None:
        assert self._merge is not None
        step, source, target, _ = self._merge
        line = f"snapledger: {step} {source} into {target}: {what}"
        out = self._out().file
        out.write(visible(line) + "\n")
        out.flush()

    def _amounts(self, now: float) -> str:
        """`400 MB of 1.0 GB, 20 MB/s, 30 s left`, or the time left alone if the size is not known."""
        assert self._merge is not None
        total, fraction = self._merge[3], self._fraction
        elapsed = max(now - self._started, 1e-9)
        left = f"{_seconds(elapsed * (1.0 - fraction) / fraction)} left" if fraction > 0 else "time left unknown"
        if not total:
            return left
        done = int(total * fraction)
        rate = filesize.decimal(int(done / elapsed))
        return f"{filesize.decimal(done)} of {filesize.decimal(total)}, {rate}/s, {left}"

    def _draw(self, fraction: float) -> None:
        assert self._merge is not None
        step, source, target, total = self._merge
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                ProgressColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns: list[ProgressColumn] = [TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn()]
            if total:
                columns += [DownloadColumn(), TransferSpeedColumn()]
            columns.append(TimeRemainingColumn())
            self._bar = Progress(*columns, console=self._out(), transient=True, get_time=self._clock)
            self._bar.start()
            name = os.path.basename
            what = visible(f"{step} {name(source)} into {name(target)}")
            self._task = self._bar.add_task(what, total=float(total or 1))
        self._bar.update(self._task, completed=fraction * float(total or 1))


def _seconds(seconds: float) -> str:
    """`45 s`, `12 min 5 s`, `3 h 20 min`."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
