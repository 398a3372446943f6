"""A value kept for an object while the object lives, found by the object's identity.

Aggregates are not hashable and records compare by value, so what is derived from one of them
(its encoded text, a VM's indexes) is kept by `id()`, with a weak reference that tells a reused
id apart and drops the value when the object goes. Only for what never changes in place (a
frozen record), or is checked against a version before use (a VM's indexes).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class KeptPerObject(Generic[V]):
    def __init__(self) -> None:
        self._kept: dict[int, tuple[weakref.ref[Any], V]] = {}

    def get(self, obj: object) -> V | None:
        found = self._kept.get(id(obj))
        return found[1] if found is not None and found[0]() is obj else None

    def put(self, obj: object, value: V) -> None:
        self._kept[id(obj)] = (weakref.ref(obj, self._forget(id(obj))), value)

    def pop(self, obj: object) -> V | None:
        found = self.get(obj)
        if found is not None:
            del self._kept[id(obj)]
        return found

    def _forget(self, key: int) -> Callable[[object], None]:
        def forget(_: object) -> None:
            self._kept.pop(key, None)

        return forget

    def __len__(self) -> int:
        return len(self._kept)
