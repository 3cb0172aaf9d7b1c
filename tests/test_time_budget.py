"""--time-budget's first-rung deadline: a trial starts only if it can reach its first rung
(its epochs and the decay branch there) before the trials stop, which is the budget less
the finalists' reserve. A stand-in clock, no Ray run."""

from __future__ import annotations

import pickle

import pytest

from tune.time_budget import RungDeadline, TimeBudget, finalists_reserve_s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _deadline(tmp_path, budget=1000.0, rounds=0, max_epochs=10, first_rung=2):
    clock = Clock()
    deadline = RungDeadline(
        budget, str(tmp_path), "exp", first_rung, reserve_rounds=rounds,
        max_epochs=max_epochs, clock=clock,
    )  # fmt: skip
    return deadline, clock


def _epoch(seconds: float, epoch: int, branch_s: float = 0.0, branch_epochs: float = 0.0):
    result = {"epoch_seconds": seconds, "epoch": epoch, "val_acc": 0.5}
    if branch_epochs:
        result |= {"decay_branch_seconds": branch_s, "decay_branch_epochs": branch_epochs}
    return result


def test_nothing_seen_nothing_to_judge_by(tmp_path):
    deadline, clock = _deadline(tmp_path, budget=100.0, rounds=2)
    clock.now += 99.0
    assert deadline.can_reach_first_rung()


def test_the_first_rung_must_be_reached_before_the_finalists_reserve(tmp_path):
    # Epochs of 20 s, the finalists one round of 10 epochs: the trials stop at 1000 - 200.
    deadline, clock = _deadline(tmp_path, budget=1000.0, rounds=1, max_epochs=10)
    for epoch in range(1, 4):
        deadline.observe(_epoch(20.0, epoch))
    assert deadline.reserve_s() == pytest.approx(200.0)
    assert deadline.trials_stop_at_s() == pytest.approx(800.0)
    # Reaching epoch 2 takes 2 x 20 s and the branch there (a fifth of 2 epochs at 20 s).
    assert deadline.first_rung_seconds() == pytest.approx(48.0)
    clock.now += 750.0
    assert deadline.can_reach_first_rung()  # 750 + 48 <= 800
    clock.now += 10.0
    assert not deadline.can_reach_first_rung()  # 760 + 48 > 800, though < 1000


def test_the_reserve_is_the_stoppers(tmp_path):
    """The deadline keeps the reserve TimeBudget stops the trials at, from the same epochs."""
    deadline, _ = _deadline(tmp_path, budget=1000.0, rounds=2, max_epochs=10)
    stopper = TimeBudget(1000.0, str(tmp_path), "exp", reserve_rounds=2, max_epochs=10)
    for epoch in range(1, 5):
        deadline.observe(_epoch(15.0, epoch))
        stopper("t", {"training_iteration": epoch, "time_total_s": 15.0 * epoch})
    assert deadline.reserve_s() == pytest.approx(stopper.reserve_s) == pytest.approx(300.0)
    assert finalists_reserve_s(100.0, 2, 10, 15.0) == 50.0  # at most half the budget


def test_the_decay_branch_counts_at_its_own_speed_and_length(tmp_path):
    deadline, clock = _deadline(tmp_path, budget=100.0, first_rung=2)
    deadline.observe(_epoch(10.0, 1))
    # The branch at epoch 2 trained 0.4 epochs in 8 s: 20 s per epoch (its own data passes).
    deadline.observe(_epoch(10.0, 2, branch_s=8.0, branch_epochs=0.4))
    deadline.observe(_epoch(10.0, 3))
    assert deadline.epoch_seconds() == pytest.approx(10.0)  # the branch is not an epoch's time
    assert deadline.first_rung_seconds() == pytest.approx(2 * 10.0 + 0.4 * 20.0)
    clock.now += 75.0
    assert not deadline.can_reach_first_rung()  # 75 + 28 > 100 (without the branch: 95)
    clock.now -= 5.0
    assert deadline.can_reach_first_rung()


def test_a_failed_epoch_is_not_a_measure(tmp_path):
    deadline, _ = _deadline(tmp_path)
    deadline.observe({"epoch_seconds": 500.0, "epoch": 1, "failure": "OutOfMemoryError"})
    assert deadline.seen == []


def test_a_deadline_saved_before_branches_were_counted_resumes(tmp_path):
    deadline, _ = _deadline(tmp_path, rounds=1)
    state = dict(deadline.__dict__)
    for key in ("reserve_rounds", "max_epochs", "clock"):
        del state[key]
    state["seen"] = [12.0, 14.0]  # plain epoch seconds, as saved before
    old = RungDeadline.__new__(RungDeadline)
    old.__setstate__(state)
    assert old.epoch_seconds() == pytest.approx(13.0)
    assert old.reserve_s() == 0.0  # it reserved nothing then
    assert pickle.loads(pickle.dumps(old)).epoch_seconds() == pytest.approx(13.0)
