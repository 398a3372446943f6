"""How an aggregate becomes a checkpoint row and back: eventsourcing's Snapshot through a Mapper
with a transcoder that keeps every Python type aggregate state holds, and a check that a row
is what this code wrote (its checksum, its topic, classes of snapledger.domain only).

A row that fails any check raises ProjectionDamaged: the caller drops the projection and folds
the events again, never trusts the row.
"""

from __future__ import annotations

import gc
import importlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from snapledger.adapters.checkpoint.rules import Row, row_checksum, row_well_typed
from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.kept import KeptPerObject
from snapledger.projections.view import LedgerView

SNAPSHOT_TOPIC = get_topic(Snapshot)
AGGREGATE_TOPICS = {get_topic(VirtualMachine), get_topic(ImageRegistration)}
DOMAIN = "snapledger.domain."  # the only modules a checkpoint may name classes of


class ProjectionDamaged(Exception):
    """A checkpoint row that can't be what this code wrote."""


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class CheckpointTranscoder(Transcoder):
    """JSON that gives back exactly the Python values aggregate state holds.

    The library's JSONTranscoder encodes a tuple as a list and a StrEnum member as a plain
    string without asking any transcoding (the json module handles both itself), and a snapshot
    decoded that way is not the aggregate it was: `reserved_by == (vm, op_id)` and
    `origin is Origin.MANAGED` would no longer hold. Here every value is tagged before json sees
    it: tuples, sets, datetimes, UUIDs, and the dataclasses and enums of snapledger.domain (only
    those: a checkpoint names no other class).
    """

    def __init__(self) -> None:
        self._classes: dict[str, Any] = {}
        self._fields: dict[type, tuple[str, ...]] = {}
        self._decoder = json.JSONDecoder(object_hook=self._untag)
        self._texts: KeptPerObject[str] = KeptPerObject()  # a frozen record's text
        self._pairs: KeptPerObject[tuple[str, str]] = KeptPerObject()  # its key and `"key":text`
        self._untaggers: dict[str, Callable[[Any], Any]] = {
            "tuple": tuple,
            "set": set,
            "frozenset": frozenset,
            "datetime": datetime.fromisoformat,
            "uuid": UUID,
            "dict": dict,
            "dataclass": self._dataclass,
            "enum": self._enum,
        }

    def encode(self, obj: Any) -> bytes:
        return self._text(obj).encode()

    def _text(self, o: Any) -> str:
        """`json.dumps(self._tag(o))`, compact, put together from parts: the text of a frozen
        record of the domain is kept while the record lives (records are replaced, never
        changed), so a VM with 10,000 snapshots is not tagged and encoded whole at every save."""
        t = type(o)
        if t is dict:
            for key in o:
                if type(key) is not str:
                    raise TypeError(f"a checkpoint holds str keys only, not {key!r}")
            if len(o) == 2 and "_type_" in o:  # would read as a tag: as pairs instead
                listed = ",".join(f"[{_dumps(k)},{self._text(v)}]" for k, v in o.items())
                return f'{{"_type_":"dict","_data_":[{listed}]}}'
            parts = []
            for k, v in o.items():
                pair = self._pairs.get(v)  # the common case first: a VM's records, by key
                if pair is not None and pair[0] == k:
                    parts.append(pair[1])
                else:
                    parts.append(self._pair(k, v))
            return "{" + ",".join(parts) + "}"
        if t is list:
            return "[" + ",".join([self._text(v) for v in o]) + "]"
        if t is tuple:
            return '{"_type_":"tuple","_data_":[' + ",".join([self._text(v) for v in o]) + "]}"
        if is_dataclass(o) and t.__module__.startswith(DOMAIN) and t.__dataclass_params__.frozen:
            text = self._texts.get(o)
            if text is None:
                text = _dumps(self._tag(o))
                self._texts.put(o, text)
            return text
        return _dumps(self._tag(o))

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data.decode())

    def _pair(self, key: str, value: Any) -> str:
        pair = _dumps(key) + ":" + self._text(value)
        if self._texts.get(value) is not None:  # a kept record: its pair is kept as well
            self._pairs.put(value, (key, pair))
        return pair

    def _tag(self, o: Any) -> Any:
        t = type(o)
        if t is str or t is int or t is float or t is bool or o is None:
            return o
        if t is dict:
            out = {}
            for key, value in o.items():
                if type(key) is not str:
                    raise TypeError(f"a checkpoint holds str keys only, not {key!r}")
                out[key] = self._tag(value)
            if len(out) == 2 and "_type_" in out:  # would read as a tag: as pairs instead
                return {"_type_": "dict", "_data_": [[k, v] for k, v in out.items()]}
            return out
        if t is list:
            return [self._tag(v) for v in o]
        if t is tuple:
            return {"_type_": "tuple", "_data_": [self._tag(v) for v in o]}
        if t is set or t is frozenset:
            items = [self._tag(v) for v in o]
            try:
                items.sort()
            except TypeError:
                pass
            return {"_type_": t.__name__, "_data_": items}
        if t is datetime:
            return {"_type_": "datetime", "_data_": o.isoformat()}
        if t is UUID:
            return {"_type_": "uuid", "_data_": o.hex}
        if isinstance(o, Enum) and t.__module__.startswith(DOMAIN):
            return {"_type_": "enum", "_data_": [get_topic(t), self._tag(o.value)]}
        if is_dataclass(o) and t.__module__.startswith(DOMAIN):
            names = self._field_names(t)  # by position: the code is the same (code_fingerprint)
            return {
                "_type_": "dataclass",
                "_data_": [get_topic(t), [self._tag(getattr(o, n)) for n in names]],
            }
        raise TypeError(f"a checkpoint can't hold a {t.__module__}.{t.__qualname__}")

    def _untag(self, d: dict[str, Any]) -> Any:
        if len(d) != 2:
            return d
        kind = d.get("_type_")
        if kind is None:
            return d
        untag = self._untaggers.get(kind)
        if untag is None:
            raise ValueError(f"unknown tag {kind!r}")
        return untag(d["_data_"])

    def _dataclass(self, data: list[Any]) -> Any:
        topic, values = data
        cls = self._class(topic)
        if not (isinstance(cls, type) and is_dataclass(cls)):
            raise ValueError(f"{topic} is not a dataclass")
        names = self._field_names(cls)
        if len(values) != len(names):
            raise ValueError(f"{topic} has {len(names)} fields, not {len(values)}")
        obj = object.__new__(cls)
        for name, value in zip(names, values, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    def _enum(self, data: list[Any]) -> Any:
        cls = self._class(data[0])
        if not (isinstance(cls, type) and issubclass(cls, Enum)):
            raise ValueError(f"{data[0]} is not an enum")
        return cls(data[1])

    def _field_names(self, cls: type) -> tuple[str, ...]:
        names = self._fields.get(cls)
        if names is None:
            names = self._fields[cls] = tuple(f.name for f in fields(cls))
        return names

    def _class(self, topic: str) -> Any:
        cls = self._classes.get(topic)
        if cls is None:
            module, _, qualname = topic.partition(":")
            if not module.startswith(DOMAIN):
                raise ValueError(f"a checkpoint names {topic!r}, outside {DOMAIN}")
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            self._classes[topic] = cls
        return cls


class CheckpointCodec:
    """Aggregate <-> checkpoint row, through eventsourcing's Snapshot and Mapper (with the
    application's compressor and cipher, so a checkpoint is as protected as the events)."""

    def __init__(self, app_mapper: Mapper[UUID]) -> None:
        self.mapper: Mapper[UUID] = Mapper(
            transcoder=CheckpointTranscoder(),
            compressor=app_mapper.compressor,
            cipher=app_mapper.cipher,
        )

    def row(self, aggregate: Aggregate, born: int) -> Row:
        stored = self.mapper.to_stored_event(Snapshot.take(aggregate))
        oid = stored.originator_id.hex if isinstance(stored.originator_id, UUID) else str(stored.originator_id)
        live = _live(aggregate)
        checksum = row_checksum(oid, stored.originator_version, born, stored.topic, stored.state, live)
        return Row(oid, stored.originator_version, born, stored.topic, stored.state, checksum, live)

    def aggregate(self, row: Row) -> Aggregate:
        oid, version, born, topic, state, checksum, live = row
        if (
            not row_well_typed(row)
            or topic != SNAPSHOT_TOPIC
            or checksum != row_checksum(oid, version, born, topic, state, live)
        ):
            raise ProjectionDamaged(f"checkpoint row {oid!r} v{version!r} is damaged")
        try:
            snapshot = self.mapper.to_domain_event(StoredEvent(UUID(oid), version, topic, state))
            if snapshot.topic not in AGGREGATE_TOPICS:  # type: ignore[attr-defined]
                raise ValueError(f"not an aggregate of the ledger: {snapshot.topic!r}")  # type: ignore[attr-defined]
            aggregate = snapshot.mutate(None)  # type: ignore[attr-defined]
        except Exception as error:
            raise ProjectionDamaged(f"checkpoint row {oid} v{version}: {error}") from error
        if not isinstance(aggregate, Aggregate):
            raise ProjectionDamaged(f"checkpoint row {oid} v{version} is not an aggregate")
        if live != _live(aggregate):  # a VM hidden from a process's load, or the like
            raise ProjectionDamaged(f"checkpoint row {oid} v{version} is marked {'live' if live else 'not live'} wrongly")
        return aggregate

    def view(self, rows: Iterable[Row], position: int) -> LedgerView:
        with collector_paused():
            return LedgerView.restored(((self.aggregate(r), r.born) for r in rows), position)


def _live(aggregate: Aggregate) -> bool:
    """What a process loads: every VM, and a registration some VM uses or an operation holds."""
    return not isinstance(aggregate, ImageRegistration) or aggregate.live


@contextmanager
def collector_paused() -> Iterator[None]:
    """Decoding a checkpoint, or applying the few thousand events after one, makes some 10^5
    objects and no garbage cycles; the cyclic collector would walk the growing heap again and
    again (a fifth to a quarter of the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


