"""--warm-start: an earlier experiment named, or given by its folder's path, seeds the new
study with its finished trials; one that searched otherwise (space, epochs, budget, subset,
data, seed) is refused before Ray starts, with a message that names the difference."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search_spaces import ask_fitting, get_space
from tests.conftest import write_python_batches
from tests.searchrun import check_ok, cli, search
from training.artifacts import write_json
from tune import runner
from tune import search as search_cli
from tune.cli import UsageError, build_parser
from tune.settings import SETTINGS_FILE, check_warm_start, resolve_settings
from tune.storage import ExperimentStorage
from tune.study import open_study, study_url

BUDGET = 1_000_000
LIKE = {
    "space": "efficient_resnet",
    "max_epochs": 6,
    "budget": BUDGET,
    "subset": 5_000,
    "data": "/data/cifar",
    "seed": 0,
}


def _storage(root: Path, name: str) -> ExperimentStorage:
    storage = ExperimentStorage(str(root), name)
    storage.local_dir.mkdir(parents=True, exist_ok=True)
    return storage


def _experiment(root: Path, name: str, values: list[float], **settings) -> ExperimentStorage:
    """A finished experiment: its settings (LIKE unless given) and a study of `values`."""
    settings = {**LIKE, **settings}
    storage = _storage(root, name)
    write_json(storage.local_dir / SETTINGS_FILE, settings)
    study = open_study(storage, seed=1, n_startup_trials=4)
    for value in values:
        trial, _ = ask_fitting(study, get_space(settings["space"]), settings["budget"])
        trial.set_user_attr("ray_trial_id", "old")
        trial.report(value, settings["max_epochs"])
        study.tell(trial, value)
    trial, _ = ask_fitting(study, get_space(settings["space"]), settings["budget"])
    study.tell(trial, state=TrialState.FAIL)  # not carried over
    return storage


def _warm_trials(storage_path: Path, name: str, warm_start: str, space=LIKE["space"]):
    """The trials a new search's study starts with, warm-started from `warm_start`."""
    from tune.searcher import StudySearcher

    new = _storage(storage_path, name)
    searcher = StudySearcher(
        space=space, budget=BUDGET, seed=0, max_epochs=6, storage_path=str(storage_path),
        name=name, n_startup_trials=7, rung_epochs=(2,), warm_start=warm_start,
    )  # fmt: skip
    config = searcher.suggest("ray-1")
    study = optuna.load_study(study_name=name, storage=study_url(new))
    return [t for t in study.trials if "warm_start" in t.user_attrs], config


def test_warm_start_adds_the_finished_trials_of_a_like_experiment(tmp_path):
    _experiment(tmp_path, "earlier", [0.3, 0.4, 0.5])
    kept = check_warm_start(_storage(tmp_path, "later"), "earlier", LIKE)
    assert kept == "earlier"
    warm, config = _warm_trials(tmp_path, "later", kept)
    assert sorted(t.value for t in warm) == [0.3, 0.4, 0.5]
    assert all(t.user_attrs["warm_start"] == "earlier" for t in warm)
    assert all(t.state == TrialState.COMPLETE and t.intermediate_values for t in warm)
    assert not any(t.user_attrs.get("ray_trial_id") == "old" for t in warm)
    # Then the space's starting points, the first of them now.
    first = dict(get_space("efficient_resnet").starting_points[0])
    assert {k: config[k] for k in first} == first


def test_warm_start_takes_the_path_of_the_experiments_folder(tmp_path, monkeypatch):
    """`--warm-start experiments/NAME` crashed inside Ray's trial loop (KeyError: 'Record
    does not exist.'): the path was taken for a study's name."""
    monkeypatch.chdir(tmp_path)
    _experiment(tmp_path / "experiments", "earlier", [0.3, 0.4])
    here = _storage(tmp_path / "experiments", "later")
    # In the same storage folder: kept as its name.
    for given in ("experiments/earlier", str(tmp_path / "experiments" / "earlier") + "/"):
        assert check_warm_start(here, given, LIKE) == "earlier"
    # In another storage folder (and renamed since: its study keeps its first name).
    (tmp_path / "experiments" / "earlier").rename(tmp_path / "moved")
    elsewhere = _storage(tmp_path / "other", "later")
    with pytest.raises(UsageError, match="no finished experiment 'moved'"):
        check_warm_start(elsewhere, "moved", LIKE)
    kept = check_warm_start(elsewhere, "./moved", LIKE)
    assert kept == str(tmp_path / "moved")
    warm, _ = _warm_trials(tmp_path / "other", "later", kept)
    assert sorted(t.value for t in warm) == [0.3, 0.4]


@pytest.mark.parametrize("key", ["space", "max_epochs", "budget", "subset", "data", "seed"])
def test_an_experiment_that_searched_otherwise_is_refused(tmp_path, key):
    other = {"space": "tiny", "max_epochs": 30, "budget": 60_000, "subset": None,
             "data": "/elsewhere", "seed": 5}[key]  # fmt: skip
    _experiment(tmp_path, "earlier", [0.3], **{key: other})
    option = "--" + key.replace("_", "-")
    with pytest.raises(UsageError) as refused:
        check_warm_start(_storage(tmp_path, "later"), "earlier", LIKE)
    message = str(refused.value)
    # It names the option, both values, and the fix.
    assert f"searched with {option} " in message and f"this search with {option} " in message
    assert "not comparable" in message and f"pass the same {option}" in message
    for value in (other, LIKE[key]):
        shown = "(none)" if value is None else f"{value:,}" if isinstance(value, int) else value
        assert shown in message


def test_a_missing_or_own_experiment_is_refused(tmp_path):
    here = _storage(tmp_path, "later")
    with pytest.raises(UsageError, match="no finished experiment 'nope'"):
        check_warm_start(here, "nope", LIKE)
    with pytest.raises(UsageError, match="is this experiment"):
        check_warm_start(here, "later", LIKE)
    with pytest.raises(UsageError, match="is this experiment"):
        check_warm_start(here, str(tmp_path / "later"), LIKE)


def test_the_command_line_takes_warm_start_and_derives_the_rungs(tmp_path):
    args = build_parser().parse_args(
        ["--warm-start", "earlier", "--storage-path", str(tmp_path), "--max-epochs", "30",
         "--data", "/data/cifar", "--budget", str(BUDGET), "--subset", "5000"]
    )  # fmt: skip
    _experiment(tmp_path, "earlier", [0.3], max_epochs=30)
    settings = resolve_settings(args, ExperimentStorage(str(tmp_path), "new"), have_gpu=True)
    assert settings.warm_start == "earlier"
    assert (settings.grace_period, settings.reduction_factor) == (4, 3)
    reduced = resolve_settings(
        build_parser().parse_args([]), ExperimentStorage(str(tmp_path), "r"), have_gpu=False
    )
    assert (reduced.max_epochs, reduced.grace_period) == (6, 2)
    help_text = build_parser().format_help()
    assert "default: 3" in help_text and "max-epochs / 9" in help_text


def test_a_mismatched_warm_start_stops_the_search_before_ray_starts(tmp_path, monkeypatch, caplog):
    data = write_python_batches(tmp_path / "data", n_train=60, n_test=20)
    # The earlier experiment was a reduced run: its budget is 60k, a share of which each
    # trial's `size` is; this search's is 5M.
    _experiment(tmp_path / "exp", "earlier", [0.3], space="tiny", budget=60_000, data=str(data))

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(runner, "start_ray", no_ray)
    argv = ["--space", "tiny", "--data", str(data), "--storage-path", str(tmp_path / "exp"),
            "--warm-start", str(tmp_path / "exp" / "earlier"), "--budget", "5000000",
            "--max-epochs", "6", "--subset", "5000"]  # fmt: skip
    assert search_cli.main(argv) == 2
    assert "--budget 60,000" in caplog.text and "--budget 5,000,000" in caplog.text


@pytest.mark.slow
def test_a_search_warm_started_by_path_runs_with_the_earlier_trials(tmp_path):
    data = write_python_batches(tmp_path / "data", n_train=200, n_test=40)
    storage = tmp_path / "experiments"
    like = {"space": "tiny", "max_epochs": 2, "budget": 60_000, "subset": 100,
            "data": str(data.resolve()), "seed": 0}  # fmt: skip
    _experiment(storage, "earlier", [0.3, 0.4], **like)
    args = cli(
        space="tiny", data=data, num_samples=2, max_epochs=2, budget=60_000, subset=100,
        skip_retrain=True, finalists=0, storage_path=storage, name="later",
        warm_start=storage / "earlier",
    )  # fmt: skip
    check_ok(search(args, tmp_path / "run"))
    study = optuna.load_study(study_name="later", storage=f"sqlite:///{storage}/later/study.db")
    warm = [t for t in study.trials if t.user_attrs.get("warm_start") == "earlier"]
    assert sorted(t.value for t in warm) == [0.3, 0.4]
    assert len(study.trials) == 4  # and the two new ones
