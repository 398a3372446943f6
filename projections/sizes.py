"""A snapshot's size as the ledger recorded it: the bytes allocated in its frozen images, from
the ImageFacts an adapter observed and the events carry (never looked up on a disk here).

Light to import (documents.py's `show` document uses it); `usage` measures the disks instead
(adapters/service/space.py, projections/space.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from snapledger.domain.images import ImageRecord


def frozen_allocated(images: Mapping[str, ImageRecord], frozen: Mapping[str, str]) -> int:
    """Bytes allocated in the frozen images `frozen` (disk -> image) names, each counted once,
    as last recorded; an image the ledger does not hold (or recorded gone) counts 0."""
    return sum(
        images[path].facts.allocated
        for path in set(frozen.values())
        if path in images and not images[path].missing
    )
