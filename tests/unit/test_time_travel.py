"""Time travel: `view_at(position)` is exactly the state the ledger had right after `position`.

A small state machine drives the real service on the memory store and simulated storage
(adopt, guest writes, snapshot, revert, delete, swap-disk, gc, failures and recover). After every
command it records the ledger position, the `show --json` document of each VM and the canonical
view. At the end, every recorded position must give back exactly that state, every position
inside a command must equal a fresh fold of the log up to it, and `diff` must be consistent
with the states at both ends.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import BadInput, Refused, StorageError
from snapledger.projections.documents import vm_document
from snapledger.projections.history import diff, event_time, parse_time
from snapledger.projections.view import LedgerView

CLUSTERS = 8
SIZE = CLUSTERS * CLUSTER
TEMPLATE = "/templates/template.qcow2"
contents = st.dictionaries(st.integers(0, CLUSTERS - 1), st.integers(1, 255), max_size=4)


class Recorded:
    def __init__(self, position: int, shows: dict[str, Any], canonical: dict[str, Any]) -> None:
        self.position, self.shows, self.canonical = position, shows, canonical


class TimeTravelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.storage = SimulatedStorage()
        self.app = LedgerApplication("memory:")
        ticks = itertools.count()
        self.clock = lambda: f"2026-01-01T00:00:00.{next(ticks):06d}+00:00"
        self.ledger = ledger_service(self.app, self.storage, clock=self.clock)
        self.names = itertools.count(1)
        self.recorded: list[Recorded] = []

    @initialize(own=st.lists(contents, min_size=1, max_size=2), on_template=st.booleans())
    def first_vm(self, own: list[dict[int, int]], on_template: bool) -> None:
        """Start with a VM and a snapshot, so every rule has something to work on."""
        self.storage.make_image(TEMPLATE, SIZE, {0: 0x70, 3: 0x73})
        self.adopt(own, on_template)
        self.ledger.snapshot(self.vm_names()[0], "s0")

    # ---- helpers -------------------------------------------------------------------------

    def vm_names(self) -> list[str]:
        return sorted(self.ledger.view.vms)

    def idle_vms(self) -> list[str]:
        return [n for n, vm in sorted(self.ledger.view.vms.items()) if vm.operation is None]

    def snapshots_of(self, vm: str) -> list[str]:
        return sorted(self.ledger.view.vms[vm].snapshots)

    # ---- commands ------------------------------------------------------------------------

    @precondition(lambda self: len(self.ledger.view.vms) < 3)
    @rule(own=st.lists(contents, min_size=1, max_size=2), on_template=st.booleans())
    def adopt(self, own: list[dict[int, int]], on_template: bool) -> None:
        vm = f"vm{next(self.names)}"
        disks = {}
        for i, content in enumerate(own):
            disk = ("vda", "vdb")[i]
            path = f"/vms/{vm}/{disk}.qcow2"
            self.storage.make_image(path, SIZE, content, backing=TEMPLATE if on_template and i == 0 else None)
            disks[disk] = path
        self.ledger.adopt(vm, disks, pools=["/templates"])  # the template's directory

    @precondition(lambda self: bool(self.idle_vms()))
    @rule(data=st.data(), writes=contents)
    def guest_writes(self, data: st.DataObject, writes: dict[int, int]) -> None:
        """Sizes change: the next command records ImagesObserved."""
        vm = data.draw(st.sampled_from(self.idle_vms()))
        active = self.ledger.view.vms[vm].disks["vda"]
        for cluster, pattern in writes.items():
            self.storage.write(active, cluster, pattern)

    @precondition(lambda self: bool(self.idle_vms()))
    @rule(data=st.data(), exclude=st.booleans())
    def snapshot(self, data: st.DataObject, exclude: bool) -> None:
        vm = data.draw(st.sampled_from(self.idle_vms()))
        skip = {"vdb"} & set(self.ledger.view.vms[vm].disks) if exclude else set()
        self.ledger.snapshot(vm, f"s{next(self.names)}", exclude=skip, description="d")

    @precondition(lambda self: any(self.snapshots_of(v) for v in self.idle_vms()))
    @rule(data=st.data())
    def revert(self, data: st.DataObject) -> None:
        vm = data.draw(st.sampled_from([v for v in self.idle_vms() if self.snapshots_of(v)]))
        self.ledger.revert(vm, data.draw(st.sampled_from(self.snapshots_of(vm))))

    @precondition(lambda self: any(self.snapshots_of(v) for v in self.idle_vms()))
    @rule(data=st.data(), branches=st.sampled_from(["forbid", "pull", "keep"]))
    def delete(self, data: st.DataObject, branches: str) -> None:
        vm = data.draw(st.sampled_from([v for v in self.idle_vms() if self.snapshots_of(v)]))
        name = data.draw(st.sampled_from(self.snapshots_of(vm)))
        try:
            self.ledger.delete(vm, name, "auto", branches)
        except Refused as refusal:
            note(f"refused: {refusal}")

    @precondition(lambda self: bool(self.idle_vms()))
    @rule(data=st.data(), content=contents, on_snapshot=st.booleans())
    def swap_disk(self, data: st.DataObject, content: dict[int, int], on_snapshot: bool) -> None:
        vm = data.draw(st.sampled_from(self.idle_vms()))
        record = self.ledger.view.vms[vm]
        backing = None
        frozen = sorted(s.disks["vda"] for s in record.snapshots.values() if "vda" in s.disks)
        if on_snapshot and frozen:
            backing = data.draw(st.sampled_from(frozen))
        path = f"/vms/{vm}/swapped{next(self.names)}.qcow2"
        self.storage.make_image(path, SIZE, content, backing=backing)
        self.ledger.swap_disk(vm, "vda", path)

    @precondition(lambda self: bool(self.idle_vms()))
    @rule(data=st.data(), include_detached=st.booleans())
    def gc(self, data: st.DataObject, include_detached: bool) -> None:
        self.ledger.gc(data.draw(st.sampled_from(self.idle_vms())), include_detached)

    @precondition(lambda self: any(self.snapshots_of(v) for v in self.idle_vms()))
    @rule(data=st.data(), operation=st.sampled_from(["snapshot", "revert", "delete"]),
          at_call=st.integers(1, 4))
    def failing_operation(self, data: st.DataObject, operation: str, at_call: int) -> None:
        """A storage error: rolled back, or left open (failed) for `recover`."""
        vm = data.draw(st.sampled_from([v for v in self.idle_vms() if self.snapshots_of(v)]))
        target = data.draw(st.sampled_from(self.snapshots_of(vm)))
        self.storage.inject(fail_at=at_call)
        try:
            if operation == "snapshot":
                self.ledger.snapshot(vm, f"s{next(self.names)}")
            elif operation == "revert":
                self.ledger.revert(vm, target)
            else:
                self.ledger.delete(vm, target, "auto", "keep")
        except StorageError as error:
            note(f"{operation} failed: {error}")
        finally:
            self.storage.inject()

    @precondition(lambda self: len(self.idle_vms()) < len(self.ledger.view.vms))
    @rule()
    def recover(self) -> None:
        self.ledger.recover()

    # ---- recording and the final check ---------------------------------------------------

    @invariant()
    def record(self) -> None:
        position = self.app.recorder.max_notification_id() or 0
        assert self.ledger.view.position == position
        if self.recorded and self.recorded[-1].position == position:
            return  # nothing was recorded since (a refused command)
        shows = {name: vm_document(self.ledger.view, name) for name in self.vm_names()}
        self.recorded.append(Recorded(position, shows, self.ledger.view.canonical()))

    def teardown(self) -> None:
        if not self.recorded:
            return
        check_history(self.ledger, self.recorded)


def fresh_fold(app: LedgerApplication) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """The canonical view and the `show` documents right after every position, from one plain
    fold of the whole log that starts at nothing (no checkpoint, no `stop`)."""
    view = LedgerView()
    states = {0: (view.canonical(), {})}
    for event, position in app.events_after(0):
        view.apply(event, position)
        states[position] = (view.canonical(), {n: vm_document(view, n) for n in sorted(view.vms)})
    return states


def check_history(ledger: Snapledger, recorded: list[Recorded]) -> None:
    last = ledger.last_position()
    assert recorded[-1].position == last
    at: dict[int, LedgerView] = {}

    def view_at(position: int) -> LedgerView:
        if position not in at:
            at[position] = ledger.view_at(position)
        return at[position]

    # Every position, also inside a command, is a fresh fold of the log up to it; and every
    # position recorded after a command gives back exactly what `show` said then.
    fresh = fresh_fold(ledger.app)
    assert set(fresh) == set(range(last + 1))
    for position, (canonical, shows) in fresh.items():
        view = view_at(position)
        assert view.canonical() == canonical, position
        assert {n: vm_document(view, n) for n in sorted(view.vms)} == shows, position
    for entry in recorded:
        view = view_at(entry.position)
        assert view.canonical() == entry.canonical, entry.position
        assert {n: vm_document(view, n) for n in sorted(view.vms)} == entry.shows, entry.position

    # --at TIME: the last event at or before a time (the times of the recorded positions).
    times = {p: event_time(e) for e, p in ledger.app.events_after(0)}
    for entry in recorded[1:]:
        when = times[entry.position]
        assert ledger.position_at(when) == max(p for p, t in times.items() if t <= when)
    if times:
        assert ledger.position_at(min(times.values()) - timedelta(microseconds=1)) == 0

    # diff: empty against itself, and applied to the state at N it gives the state at M.
    positions = [entry.position for entry in recorded]
    pairs = list(zip(positions, positions[1:], strict=False))
    pairs += [(positions[0], positions[-1]), (0, positions[-1])]
    pairs += [(p, p + 1) for p in range(0, last, max(1, last // 10))]
    for position in positions:
        for name in view_at(position).vms:
            same = diff(view_at(position), view_at(position), name,
                        ledger.app.events_after(position, stop=position))
            assert not same["changed"], same
    for start, end in pairs:
        for name in view_at(end).vms:
            check_diff(ledger, view_at(start), view_at(end), name)


def check_diff(ledger: Snapledger, before: LedgerView, after: LedgerView, name: str) -> None:
    start, end = before.position, after.position
    events = list(ledger.app.events_after(start, stop=end))
    found = diff(before, after, name, events)
    old = vm_document(before, name) if name in before.vms else None
    new = vm_document(after, name)

    # current
    old_current = old["current"] if old else None
    if found["current"] is None:
        assert old_current == new["current"]
    else:
        assert found["current"] == {"from": old_current, "to": new["current"]}
    # snapshots
    # a snapshot's allocated bytes are what was last measured of its images, not a change diff
    # names (a revert or a merge observes them again)
    snaps = {s["name"]: _unsized(s) for s in (old["snapshots"] if old else [])}
    for s in found["snapshots"]["removed"]:
        assert snaps.pop(s["name"]) == _unsized(s)
    for s in found["snapshots"]["added"]:
        assert s["name"] not in snaps
        snaps[s["name"]] = _unsized(s)
    for change in found["snapshots"]["changed"]:
        snap = snaps[change["name"]]
        assert (snap["parent"], snap["disks"]) == (change["parent"]["from"], change["disks"]["from"])
        snaps[change["name"]] = {**snap, "parent": change["parent"]["to"], "disks": change["disks"]["to"]}
    assert snaps == {s["name"]: _unsized(s) for s in new["snapshots"]}
    # disks
    disks = dict(old["disks"]) if old else {}
    for disk, change in found["disks"].items():
        assert disks.get(disk, {}).get("active") == change["active"]["from"]
        assert disks.get(disk, {}).get("chain", []) == change["chain"]["from"]
        disks[disk] = {"active": change["active"]["to"], "chain": change["chain"]["to"]}
    assert disks == new["disks"]
    # images
    images = set(before.vms[name].images) if name in before.vms else set()
    for image in found["images"]["removed"]:
        images.remove(image["path"])
    for image in found["images"]["added"]:
        assert image["path"] not in images
        images.add(image["path"])
    assert images == set(after.vms[name].images)
    assert all(i["owner"] in ("managed", "adopted", "read-only") for k in ("added", "removed")
               for i in found["images"][k])
    # operations: exactly those whose events lie in between, and consistent with both ends
    own = [(type(e).__qualname__.rpartition(".")[2], vars(e), p) for e, p in events
           if e.originator_id == after.vms[name].id]
    assert [o["id"] for o in found["operations"]["started"]] == [
        d["op_id"] for k, d, _ in own if k == "OperationStarted"
    ]
    assert {o["id"] for o in found["operations"]["finished"]} == {
        d["op_id"] for k, d, _ in own if k in ("SnapshotTaken", "Reverted", "SnapshotDeleted",
                                              "ImagesDiscarded", "OperationRolledBack")
    }
    assert all(start < o["position"] <= end for k in ("started", "finished", "failed")
               for o in found["operations"][k])
    # the two states alone see a subset of the same
    alone = diff(before, after, name)
    for key in ("current", "snapshots", "disks", "images", "domain_xml_changed"):
        assert alone[key] == found[key]
    for key in ("started", "finished"):
        assert {o["id"] for o in alone["operations"][key]} <= {o["id"] for o in found["operations"][key]}
    assert not found["changed"] or start != end


TestTimeTravel = TimeTravelMachine.TestCase
# Each example checks every position of its history (quadratic in its length): shorter
# histories, fewer of them than the profile's default, and no explain phase (it replays the
# whole check many times over).
TestTimeTravel.settings = settings(
    max_examples=max(10, settings.default.max_examples // 4),
    stateful_step_count=min(30, settings.default.stateful_step_count),
    phases=[phase for phase in Phase if phase is not Phase.explain],
)


# ---- the edges, on a small fixed history --------------------------------------------------


@pytest.fixture
def ledger() -> Snapledger:
    storage = SimulatedStorage()
    storage.make_image("/images/base.qcow2", SIZE, {0: 1})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": "/images/base.qcow2"})
    ledger.snapshot("vm", "s1")
    ledger.snapshot("vm", "s2")
    ledger.delete("vm", "s1")
    return ledger


def test_positions_outside_the_ledger_are_bad_input(ledger: Snapledger) -> None:
    assert ledger.view_at(0).vms == {}
    assert ledger.view_at(ledger.last_position()).canonical() == ledger.view.canonical()
    for position in (-1, ledger.last_position() + 1):
        with pytest.raises(BadInput):
            ledger.view_at(position)


def test_times_are_iso_8601_naive_meaning_utc() -> None:
    utc = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)
    assert parse_time("2026-11-25T21:00:00Z") == utc
    assert parse_time("2026-11-25T21:00:00") == utc
    assert parse_time("2026-11-25T22:00:00+01:00") == utc
    assert parse_time("2026-11-25T22:00:00+01:00").tzinfo == timezone(timedelta(hours=1))
    for bad in ("yesterday", "2026-13-01", "", "21:00"):
        with pytest.raises(BadInput):
            parse_time(bad)


def test_the_last_event_at_or_before_a_time_counts_even_if_clocks_went_back(ledger: Snapledger) -> None:
    times = [event_time(e) for e, _ in ledger.app.events_after(0)]
    assert ledger.position_at(times[-1] + timedelta(days=1)) == len(times)
    assert ledger.position_at(times[0]) == 1
    assert ledger.position_at(times[0] - timedelta(seconds=1)) == 0


def test_diff_names_what_a_delete_changed(ledger: Snapledger) -> None:
    before_delete = next(
        p for e, p in ledger.app.events_after(0) if type(e).__name__ == "OperationStarted"
        and vars(e)["kind"] == "delete"
    ) - 1
    last = ledger.last_position()
    found = diff(ledger.view_at(before_delete), ledger.view_at(last), "vm",
                 ledger.app.events_after(before_delete, stop=last))
    assert [s["name"] for s in found["snapshots"]["removed"]] == ["s1"]
    assert found["snapshots"]["changed"] == [  # base.s1 was committed into base.qcow2
        {"name": "s2", "parent": {"from": "s1", "to": None},
         "disks": {"from": {"vda": "/images/base.s1"}, "to": {"vda": "/images/base.qcow2"}}}
    ]
    assert found["images"] == {
        "added": [],
        "removed": [{"path": "/images/base.s1", "owner": "managed"}],
        "rebacked": [{"path": "/images/base.s2", "from": "/images/base.s1", "to": "/images/base.qcow2"}],
    }
    assert found["disks"]["vda"]["chain"] == {
        "from": ["/images/base.s2", "/images/base.s1", "/images/base.qcow2"],
        "to": ["/images/base.s2", "/images/base.qcow2"],
    }
    assert [o["kind"] for o in found["operations"]["started"]] == ["delete"]
    assert [(o["kind"], o["outcome"]) for o in found["operations"]["finished"]] == [("delete", "done")]
    assert found["current"] is None and found["changed"]
    assert not diff(ledger.view_at(last), ledger.view_at(last), "vm")["changed"]


def _unsized(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snapshot.items() if k != "allocated"}
