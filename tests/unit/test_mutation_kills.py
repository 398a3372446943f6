"""Tests written for mutants that survived the fast unit tests (issue 15, item 4; docs/reliability.md,
"Mutation score"). Each states a rule the planners depend on, not how the code is written."""

from __future__ import annotations

import dataclasses

import pytest

from snapledger.domain.steps import Commit, CreateOverlay, DeleteFile, Pull, SetActive
from snapledger.projections.cost import CostModel

MIB = 1 << 20
GIB = 1 << 30
OVERHEAD = CostModel().per_step_seconds


# --- the cost model (projections/cost.py): the calibration docs/qemu-img-techniques.md measured ---


def test_the_cost_model_is_calibrated_as_documented() -> None:
    model = CostModel()
    assert model.copy_bytes_per_second == 400 * MIB
    assert model.flatten_scan_seconds_per_gib == 0.14
    assert model.in_chain_scan_seconds_per_gib == 0.002
    assert 0 < model.per_step_seconds < 0.01


def test_moving_bytes_costs_their_size_over_the_copy_rate_plus_one_step() -> None:
    model = CostModel()
    assert model.seconds(Commit(top="/t", base="/b", bytes=400 * MIB)) == pytest.approx(1 + OVERHEAD)
    assert model.seconds(Commit(top="/t", base="/b", bytes=200 * MIB)) == pytest.approx(
        0.5 + OVERHEAD
    )
    assert model.seconds(DeleteFile(path="/d")) == pytest.approx(OVERHEAD)
    faster = CostModel(copy_bytes_per_second=800 * MIB)
    assert faster.seconds(Commit(top="/t", base="/b", bytes=400 * MIB)) == pytest.approx(
        0.5 + OVERHEAD
    )


def test_a_flatten_pays_for_walking_the_whole_image_and_a_pull_in_the_chain_barely() -> None:
    model = CostModel()
    flatten = Pull(image="/i", new_backing=None, new_backing_format=None, scanned_bytes=2 * GIB)
    in_chain = Pull(image="/i", new_backing="/b", new_backing_format="qcow2", scanned_bytes=2 * GIB)
    assert model.seconds(flatten) == pytest.approx(OVERHEAD + 0.28)
    assert model.seconds(in_chain) == pytest.approx(OVERHEAD + 0.004)
    half = Pull(image="/i", new_backing=None, new_backing_format=None, scanned_bytes=GIB // 2)
    assert model.seconds(half) == pytest.approx(OVERHEAD + 0.07)  # no rounding to whole GiB
    moving = dataclasses.replace(flatten, bytes=400 * MIB)
    assert model.seconds(moving) == pytest.approx(OVERHEAD + 1 + 0.28)


def test_steps_in_the_ledger_alone_cost_nothing_and_a_plan_costs_the_sum_of_its_steps() -> None:
    model = CostModel()
    assert model.seconds(SetActive(disk="vda", path="/p")) == 0.0
    steps = [
        CreateOverlay(path="/o", backing="/b", backing_format="qcow2", virtual_size=GIB),
        Commit(top="/t", base="/b", bytes=400 * MIB),
        SetActive(disk="vda", path="/p"),
    ]
    assert model.total(steps) == pytest.approx(sum(model.seconds(s) for s in steps))
    assert model.total(steps) == pytest.approx(2 * OVERHEAD + 1)


def test_a_cost_model_is_a_value_that_cannot_be_changed_in_place() -> None:
    model = CostModel(per_step_seconds=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.per_step_seconds = 0.0  # type: ignore[misc]
    assert model == CostModel(per_step_seconds=0.5)
