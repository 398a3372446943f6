"""`verify`'s look at the persisted projection: every stored checkpoint and document compared
with the events folded again from the first, so that an edit that kept every checksum right is
found too (docs/architecture.md, "Trusting a checkpoint").

What a process checks when it loads a checkpoint is cheap and local: the code fingerprint, the
anchor (the chain's hash at the checkpoint's position), the counts and each row's checksum;
a checkpoint failing any of them is never used, only rebuilt. What it can't check without
folding every event is whether a row that passes all of them says what the events say: that
is this module, run by `verify`, as the hash chain itself is. A projection found disagreeing
is dropped (the next command rebuilds it from the events) and reported as tampering.
"""

from __future__ import annotations

from collections.abc import Iterable

from snapledger.adapters.checkpoint.codec import ProjectionDamaged, collector_paused
from snapledger.adapters.checkpoint.persisted import STORE_ERRORS, PersistedProjection
from snapledger.adapters.checkpoint.rules import DAMAGED, UNANCHORED, Doc, Row, doc_intact
from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.dag import ImageDag
from snapledger.projections.documents import json_text, vm_document
from snapledger.projections.view import LedgerView

SHOWN = 3  # disagreements named in the one finding


def projection_findings(projection: PersistedProjection) -> list[str]:
    """One finding if the stored projection disagrees with the ledger's events (it is then
    dropped), none if it agrees, is not there, or was written by other code (which no process
    uses: it is rebuilt on the next load)."""
    store = projection.store
    try:
        top, tracking, rows = store.read_current()
        points, docs = store.read_kept()
    except STORE_ERRORS:
        return []  # the store's own trouble: commands say so; nothing here to compare
    if tracking is None:
        return []
    if tracking.fingerprint == DAMAGED:
        wrong = ["its tracking row was edited (its checksum fails)"]
    elif tracking.position > top:  # it was never written ahead of the ledger: events went
        wrong = [f"it covers the ledger up to position {tracking.position}, and the ledger now "
                 f"ends at {top} (events removed from its end?)"]
    elif tracking.fingerprint == UNANCHORED:
        wrong = [f"it was written over another history (the hash chain at position "
                 f"{tracking.position} is not the hash it was anchored to)"]
    elif tracking.fingerprint != projection.fingerprint:
        return []
    else:
        wrong = _compared(projection, tracking.position, tracking.aggregates, rows, points, docs)
    if not wrong:
        return []
    try:
        store.wipe(tracking)
    except STORE_ERRORS:
        pass
    shown = "; ".join(wrong[:SHOWN]) + (f"; and {len(wrong) - SHOWN} more" if len(wrong) > SHOWN else "")
    return [f"the persisted projection (a cache of the events) disagreed with them: {shown}; "
            "it was dropped and will be rebuilt from the events"]


def _compared(
    projection: PersistedProjection, position: int, count: int, rows: list[Row],
    points: list[int], docs: list[Doc],
) -> list[str]:
    wrong: list[str] = []
    folded = LedgerView()
    with collector_paused():
        for point in [p for p in points if p < position]:
            folded.apply_all(projection.app.events_after(folded.position, stop=point))
            found = projection.store.read_at(point, projection.fingerprint)
            if found is None or found[0] != point:
                wrong.append(f"archive point {point} can't be read back")
                continue
            wrong += _against(projection, folded, f"archive point {point}", found[1], found[2])
        folded.apply_all(projection.app.events_after(folded.position, stop=position))
    wrong += _against(projection, folded, f"position {position}", count, rows)
    return wrong + _documents(folded, docs)


def _against(
    projection: PersistedProjection, folded: LedgerView, where: str, count: int, rows: Iterable[Row]
) -> list[str]:
    try:
        stored = projection.codec.view(rows, folded.position)
    except ProjectionDamaged as damaged:
        return [f"at {where}, {damaged}"]
    mine, theirs = stored.aggregates(), folded.aggregates()
    wrong = [
        f"at {where}, {_named(theirs.get(i) or mine[i])} differs"
        for i in sorted({*mine, *theirs}, key=str)
        if i not in mine or i not in theirs or mine[i] != theirs[i]
    ]
    # where a VM was born decides which VM a name means after a retire (a registration's is
    # only an order, and a process that looked one up does not know it)
    wrong += [
        f"at {where}, where {_named(vm)} was born differs"
        for i, vm in theirs.items()
        if isinstance(vm, VirtualMachine) and i in mine and stored.born[i] != folded.born[i]
    ]
    if len(mine) != count:
        wrong.append(f"at {where}, {len(mine)} aggregates stored where the row says {count}")
    return wrong


def _documents(folded: LedgerView, docs: list[Doc]) -> list[str]:
    wrong: list[str] = []
    dags: dict[str, ImageDag] = {}
    for doc in docs:
        vm = folded.vms.get(doc.vm)
        if not doc_intact(doc) or vm is None:
            wrong.append(f"the stored `show` document of {doc.vm!r} is damaged")
            continue
        dag = dags.get(vm.home) or dags.setdefault(vm.home, ImageDag(folded, home=vm.home))
        if doc.text != json_text(vm_document(folded, doc.vm, dag)):
            wrong.append(f"the stored `show` document of VM {doc.vm!r} differs")
    return wrong


def _named(aggregate: object) -> str:
    if isinstance(aggregate, VirtualMachine):
        return f"VM {aggregate.name!r}"
    if isinstance(aggregate, ImageRegistration):
        return f"the registration of {aggregate.path}"
    return "an aggregate"
