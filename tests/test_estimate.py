"""The duration model (tune.estimate) with stand-in timings: every number below is worked out
by hand from the model's rules."""

from __future__ import annotations

import pytest

from tune.estimate import (
    Shape,
    Timings,
    asha_survivors,
    continue_probability,
    estimate,
    reestimate,
    summary,
    trials_that_fit,
)

# Ray's ASHA keeps the k-th arrival at a rung if it is at or above the 2/3 percentile (rf 3)
# of the k values so far: the share of positions that are.
CONTINUE = [
    (1, 3, 1.0),
    (2, 3, 0.5),
    (3, 3, 1 / 3),
    (4, 3, 0.5),
    (5, 3, 0.4),
    (6, 3, 2 / 6),
    (1, 2, 1.0),
    (2, 2, 0.5),
    (3, 2, 2 / 3),
    (4, 2, 0.5),
]


@pytest.mark.parametrize(("k", "rf", "expected"), CONTINUE)
def test_continue_probability_follows_ashas_percentile(k: int, rf: int, expected: float) -> None:
    assert continue_probability(k, rf) == pytest.approx(expected)


def test_asha_keeps_more_than_a_third_of_a_small_search() -> None:
    # 6 trials at rf 3: 1 + 1/2 + 1/3 + 1/2 + 2/5 + 1/3 continue past the rung.
    assert asha_survivors(6, (2,), 3) == pytest.approx([6, 46 / 15])
    # A large search keeps close to 1/rf at each rung.
    many = asha_survivors(729, (4, 12), 3)
    assert many[1] / 729 == pytest.approx(1 / 3, abs=0.01)
    assert many[2] / many[1] == pytest.approx(1 / 3, abs=0.02)


# (name, timings, shape, expected seconds of each part: search, finalists, retrain, total)
CASES = [
    (
        "no rungs: every trial trains every epoch",
        Timings(epoch_s=10.0),
        Shape(trials=4, max_epochs=3, rungs=(), reduction_factor=3, concurrency=2),
        (4 * 3 * 10 / 2, 0.0, 0.0, 60.0),
    ),
    (
        # 6 trials, rung at 2 of 6: all train 2 epochs + a 0.4-epoch branch, 46/15 go on to 6.
        "the reduced run's shape",
        Timings(epoch_s=10.0, before_s=30.0),
        Shape(
            trials=6,
            max_epochs=6,
            rungs=(2,),
            reduction_factor=3,
            concurrency=2,
            finalists=1,
            finalist_seeds=2,
            retrain_seeds=2,
            retrain_epochs=6,
            retrain_scale=2.0,
            retrain_slots=2,
        ),
        (
            (6 * 2.4 + 46 / 15 * 4) * 10 / 2,
            60.0,
            6 * 10 * 2.0,
            30 + (6 * 2.4 + 46 / 15 * 4) * 5 + 60 + 120,
        ),
    ),
    (
        # Each trial's start counts once per trial, the finalists' runs' too.
        "a trial's start is paid by every trial",
        Timings(epoch_s=10.0, trial_start_s=5.0),
        Shape(
            trials=4,
            max_epochs=3,
            rungs=(),
            reduction_factor=3,
            concurrency=2,
            finalists=1,
            finalist_seeds=2,
        ),
        (4 * (30 + 5) / 2, 35.0, 0.0, 70.0 + 35.0),
    ),
    (
        "one trial at a time, seeds one after the other, and a seed baseline",
        Timings(epoch_s=1.0),
        Shape(
            trials=1,
            max_epochs=4,
            rungs=(),
            reduction_factor=3,
            concurrency=1,
            retrain_seeds=3,
            retrain_epochs=4,
            retrain_slots=1,
            baseline=True,
        ),
        (4.0, 0.0, 2 * 3 * 4.0, 5 * 4.0 + 4.0 + 24.0),
    ),
    (
        "a time budget caps the search, leaving its finalists their room",
        Timings(epoch_s=10.0),
        Shape(
            trials=100_000,
            max_epochs=5,
            rungs=(),
            reduction_factor=3,
            concurrency=1,
            finalists=2,
            time_budget_s=600.0,
        ),
        (500.0, 100.0, 0.0, 600.0),
    ),
    (
        "a single long trial is not shared out among idle slots",
        Timings(epoch_s=10.0),
        Shape(trials=1, max_epochs=10, rungs=(), reduction_factor=3, concurrency=4),
        (100.0, 0.0, 0.0, 100.0),
    ),
]


@pytest.mark.parametrize(("name", "timings", "shape", "parts"), CASES, ids=[c[0] for c in CASES])
def test_estimate_adds_up_the_parts(
    name: str, timings: Timings, shape: Shape, parts: tuple[float, ...]
) -> None:
    search, finalists, retrain, total = parts
    est = estimate(timings, shape)
    assert est.search_s == pytest.approx(search)
    assert est.finalists_s == pytest.approx(finalists)
    assert est.retrain_s == pytest.approx(retrain)
    assert est.total_s == pytest.approx(total)


def full_gpu_shape(**changes: object) -> Shape:
    """The full defaults: 64 trials of 30 epochs, rungs at 4 and 12, 3x2 finalists, 5 seeds."""
    values = dict(
        trials=64,
        max_epochs=30,
        rungs=(4, 12),
        reduction_factor=3,
        concurrency=2,
        finalists=3,
        finalist_seeds=2,
        retrain_seeds=5,
        retrain_epochs=30,
        retrain_scale=50_000 / 45_000,
        retrain_slots=2,
    )
    return Shape(**{**values, **changes})  # type: ignore[arg-type]


def test_a_long_search_says_what_fits_in_two_hours() -> None:
    timings = Timings(epoch_s=20.0, before_s=60.0)  # a T4-like epoch
    est, text = summary(timings, full_gpu_shape())
    assert est.total_s > 2 * 3600
    assert "to end within 2 h 00 min: --time-budget " in text
    fit = trials_that_fit(timings, full_gpu_shape(), 2 * 3600)
    assert 0 < fit < 64 and f"--num-samples {fit}" in text
    assert estimate(timings, full_gpu_shape(trials=fit)).total_s <= 2 * 3600
    assert estimate(timings, full_gpu_shape(trials=fit + 1)).total_s > 2 * 3600
    # The --time-budget it names makes the command fit too.
    minutes = int(text.split("--time-budget ")[1].split("m")[0])
    capped = estimate(timings, full_gpu_shape(trials=100_000, time_budget_s=minutes * 60))
    assert capped.total_s <= 2 * 3600


def test_a_short_search_gives_no_advice() -> None:
    est, text = summary(Timings(epoch_s=1.0), full_gpu_shape())
    assert est.total_s < 2 * 3600 and "to end within" not in text
    assert "estimated duration of the whole command" in text


def test_when_even_the_retrains_do_not_fit_it_says_so() -> None:
    _, text = summary(Timings(epoch_s=400.0), full_gpu_shape())
    assert "even without a search" in text and "--retrain-seeds" in text


def test_under_a_time_budget_the_rungs_count_the_trials_that_fit() -> None:
    # --time-budget alone leaves --num-samples unbounded: the rungs must not count 100,000.
    timings = Timings(epoch_s=10.0)
    shape = full_gpu_shape(trials=100_000, finalists=0, time_budget_s=3600.0)
    est, text = summary(timings, shape)
    assert est.capped
    reached = dict(est.survivors)
    # Each trial trains at least to the first rung (4 epochs, 40 s, and its branch), two at
    # once: no more than 2 x 3600 / 40 trials fit, and ASHA keeps fewer at every rung.
    assert 2 * 3600 / (30 * 10) < reached[4] <= 2 * 3600 / 40
    assert reached[4] > reached[12] > reached[30] >= 1
    assert f"about {reached[4]:.0f} trials, until the --time-budget" in text
    # The trials that fit take the search's time at the epochs each is expected to train.
    assert reached[4] * est.trial_epochs * 10.0 / 2 == pytest.approx(est.search_s, rel=0.05)


def _small_shape(**changes: object) -> Shape:
    """6 trials of 6 epochs, a rung at 2, 2 at once, 1 finalist x 2 seeds, 2 retrain seeds."""
    values = dict(
        trials=6, max_epochs=6, rungs=(2,), reduction_factor=3, concurrency=2, finalists=1,
        finalist_seeds=2, retrain_seeds=2, retrain_epochs=6, retrain_slots=2,
    )  # fmt: skip
    return Shape(**{**values, **changes})  # type: ignore[arg-type]


def test_the_update_goes_on_at_the_pace_the_search_kept() -> None:
    shape, timings = _small_shape(), Timings(epoch_s=10.0, before_s=20.0)
    est = estimate(timings, shape)
    expected_epochs = 6 * est.trial_epochs
    # Half the trial epochs done in the time the first estimate gave the whole search (5 s
    # per epoch of wall time at 2 at once): the rest at that pace, the finalists and the
    # retrains as estimated, added to what passed.
    half = expected_epochs / 2
    on_time = reestimate(timings, shape, search_elapsed_s=half * 5.0, epochs_done=half)
    assert on_time.pace_s == pytest.approx(5.0)
    assert on_time.total_s == pytest.approx(est.total_s)
    # The same epochs in twice the time (a loaded machine, gaps between trials): the search's
    # rest and the finalists take twice as long; the retrains, at the measured epoch, do not.
    slow = reestimate(timings, shape, search_elapsed_s=half * 10.0, epochs_done=half)
    assert slow.left_s == pytest.approx(half * 10.0 + 2 * est.finalists_s + est.retrain_s)
    assert slow.total_s == pytest.approx(20.0 + half * 10.0 + slow.left_s)
    assert slow.total_s > on_time.total_s
    # Past the expected epochs (more survived the rung than expected): no search left.
    over = reestimate(timings, shape, 300.0, expected_epochs + 3)
    assert over.left_s == pytest.approx(
        est.finalists_s * max(1.0, over.pace_s * 2 / 10.0) + est.retrain_s
    )


def test_under_a_time_budget_the_update_leaves_the_search_what_the_budget_leaves() -> None:
    shape = _small_shape(trials=100_000, finalists=0, time_budget_s=600.0)
    timings = Timings(epoch_s=10.0, before_s=20.0)
    est = estimate(timings, shape)
    update = reestimate(timings, shape, search_elapsed_s=200.0, epochs_done=40)
    assert update.left_s == pytest.approx(400.0 + est.retrain_s)
    assert update.total_s == pytest.approx(20.0 + 600.0 + est.retrain_s)


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


class _Storage:
    def __init__(self, folder) -> None:
        self.local_dir = folder

    def push(self, *names: str) -> None:
        pass


def test_the_callback_says_it_again_once_half_the_trials_passed_the_first_rung(
    tmp_path, caplog
) -> None:
    import json
    import logging
    from types import SimpleNamespace

    from tune.duration import ESTIMATE_FILE, DurationEstimate
    from tune.results import duration_sentence

    settings = SimpleNamespace(storage=_Storage(tmp_path))
    callback = DurationEstimate(settings, _small_shape(), before_s=20.0)  # type: ignore[arg-type]
    trials = [_Trial(f"t{i}") for i in range(6)]

    def epoch(trial: _Trial, number: int, seconds: float = 10.0) -> None:
        result = {"epoch": number, "training_iteration": number, "time_this_iter_s": seconds}
        callback.on_trial_result(0, trials, trial, result)

    with caplog.at_level(logging.INFO, logger="tune.duration"):
        for trial in trials[:2]:
            callback.on_trial_start(0, trials, trial)
            epoch(trial, 1)
        assert "estimated duration of the whole command" in caplog.text  # the first estimate
        for trial in trials[:2]:
            epoch(trial, 2, 20.0)
        assert "estimated again" not in caplog.text  # 2 of 6 at the rung: not yet
        callback.on_trial_start(0, trials, trials[2])
        epoch(trials[2], 1)
        epoch(trials[2], 2, 20.0)  # the third of six: half
    assert "estimated again after 3 trials reached epoch 2" in caplog.text
    saved = json.loads((tmp_path / ESTIMATE_FILE).read_text())
    assert saved["update"]["trial_epochs_done"] == 6
    # The report shows both beside what the command took.
    sentence = duration_sentence({**saved, "actual_s": saved["update"]["estimated_s"]})
    assert "Estimated again" in sentence and "(+0% off)" in sentence
