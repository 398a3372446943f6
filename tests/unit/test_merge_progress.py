"""The command line's progress of a long merge (output.MergeProgress), with a fake clock: plain
lines on a log every 10% or 10 s, nothing for a merge done within a second, a rich progress
line on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from snapledger.adapters.cli.output import MergeProgress
from snapledger.adapters.service.ports import MergeListener

GB = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def logged() -> tuple[MergeProgress, Clock, io.StringIO]:
    out = io.StringIO()
    clock = Clock()
    return MergeProgress(Console(file=out, force_terminal=False), clock), clock, out


def test_it_is_a_merge_listener() -> None:
    listener: MergeListener = MergeProgress()
    assert listener is not None


def test_a_merge_done_within_a_second_says_nothing() -> None:
    progress, clock, out = logged()
    progress.started("commit", "/v/web.s2", "/v/web.base", GB)
    for tenth in range(1, 11):
        clock.now += 0.09
        progress.advanced(tenth / 10)
    progress.finished()
    assert out.getvalue() == ""


def test_a_line_every_ten_percent_when_it_goes_fast() -> None:
    progress, clock, out = logged()
    progress.started("commit", "/v/web.s2", "/v/web.base", GB)
    for percent in range(1, 101):  # 1% every 0.5 s: 50 s in all, 20 MB/s
        clock.now += 0.5
        progress.advanced(percent / 100)
    progress.finished()
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[2].split(" ")[0] for line in lines[:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[3] == "snapledger: commit /v/web.s2 into /v/web.base: 40% (400.0 MB of 1.0 GB, 20.0 MB/s, 30 s left)"
    assert lines[-1] == "snapledger: commit /v/web.s2 into /v/web.base: done, 1.0 GB in 50 s, 20.0 MB/s"


def test_a_line_every_ten_seconds_when_it_goes_slowly() -> None:
    progress, clock, out = logged()
    progress.started("pull", "/v/web.s1", "/v/web.s3", 0)  # size not known
    for step in range(1, 41):  # 0.5% every 2 s
        clock.now += 2.0
        progress.advanced(step / 200)
    progress.finished()
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 + 1  # at 10, 20, … 80 s, then where it stopped
    assert lines[0] == "snapledger: pull /v/web.s1 into /v/web.s3: 2% (6 min 30 s left)"
    assert lines[-1] == "snapledger: pull /v/web.s1 into /v/web.s3: stopped at 20% after 1 min 20 s"


def test_a_new_merge_starts_afresh() -> None:
    progress, clock, out = logged()
    progress.started("commit", "/v/a", "/v/b", GB)
    clock.now += 5
    progress.advanced(0.5)
    progress.started("commit", "/v/c", "/v/d", GB)  # the first ends unfinished
    clock.now += 0.5
    progress.advanced(0.9)
    progress.finished()
    lines = out.getvalue().splitlines()
    assert lines == [
        "snapledger: commit /v/a into /v/b: 50% (500.0 MB of 1.0 GB, 100.0 MB/s, 5 s left)",
        "snapledger: commit /v/a into /v/b: stopped at 50% after 5 s",
    ]


def test_control_characters_in_a_path_are_shown_as_escapes() -> None:
    progress, clock, out = logged()
    progress.started("commit", "/v/\x1b[2Jweb", "/v/base", GB)
    clock.now += 2
    progress.advanced(0.5)
    assert "\x1b" not in out.getvalue() and "web into /v/base: 50%" in out.getvalue()


def test_on_a_terminal_a_progress_line_with_rate_and_time_left() -> None:
    out = io.StringIO()
    clock = Clock()
    progress = MergeProgress(Console(file=out, force_terminal=True, width=150), clock)
    progress.started("commit", "/v/web.s2", "/v/web.base", GB)
    for percent in range(1, 60):
        clock.now += 0.5
        progress.advanced(percent / 100)
    progress._bar.refresh()
    drawn = out.getvalue()
    assert "commit web.s2 into web.base" in drawn
    assert "MB/s" in drawn and "0:00:" in drawn and "snapledger:" not in drawn
    progress.finished()
    assert progress._bar is None
