"""qemu-img's answers about files that have not changed since they were given.

A delete deep in a 200-layer chain asked qemu-img about every layer several times, one process
each (issue 13). An answer is reused only while the file's device, inode, size, mtime and ctime
are what they were when it was given, and only if the file had been left alone for a second
before the look (its stat): a write in the same clock tick as a look leaves the times as they
were, so such an answer is never kept (git's "racily clean" rule). The file itself is still checked on every call by
the caller (where it is, what kind of file), exactly as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any

# How long a file must have been left alone before an answer about it is kept (a filesystem's
# times move in clock ticks of a few milliseconds; a second is far beyond any).
SETTLED_NS = 1_000_000_000


class SettledAnswers:
    def __init__(self) -> None:
        self._kept: dict[Hashable, tuple[tuple[int, ...], Any]] = {}

    def answer(self, key: Hashable, seen: os.stat_result, ask: Callable[[], Any], looked_at: int) -> Any:
        """The answer kept for `key` if the file `seen` describes is unchanged, else `ask()`.
        `looked_at`: time.time_ns() taken before `seen` was: the file's times must have been a
        second old then, so that a write after the look could not have left them as they were."""
        identity = (seen.st_dev, seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == identity:
            return kept[1]
        answer = ask()
        if looked_at - max(seen.st_mtime_ns, seen.st_ctime_ns) > SETTLED_NS:
            self._kept[key] = (identity, answer)
        else:
            self._kept.pop(key, None)
        return answer
