"""What the command line and the defaults make of a search, before any Ray or data."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from training.data import CifarData, TooFewTrainingImages, make_splits
from tune.cli import FULL, REDUCED, UsageError, build_parser
from tune.rungs import default_grace_period
from tune.settings import SearchSettings, open_storage, resolve_settings
from tune.storage import ExperimentStorage

from .conftest import separable_set


def _resolve(argv: list[str], have_gpu: bool, tmp_path) -> SearchSettings:
    args = build_parser().parse_args([*argv, "--storage-path", str(tmp_path)])
    return resolve_settings(args, ExperimentStorage(str(tmp_path), "x"), have_gpu)


def test_without_a_gpu_unset_options_take_the_reduced_values_and_the_message_says_so(tmp_path):
    settings = _resolve([], have_gpu=False, tmp_path=tmp_path)
    for key, value in asdict(REDUCED).items():
        if value is None and key == "grace_period":  # derived from the run's length
            value = default_grace_period(settings.max_epochs)
        assert getattr(settings, key) == value, key
    for key in ("budget", "num_samples", "max_epochs", "subset"):
        value = getattr(REDUCED, key)
        assert f"--{key.replace('_', '-')} {value:,}" in settings.reduced
    assert "pass --full" in settings.reduced
    # A value the user set is theirs, and not listed as reduced.
    mine = _resolve(["--budget", "90000", "--max-epochs", "3"], have_gpu=False, tmp_path=tmp_path)
    assert mine.budget == 90_000 and mine.max_epochs == 3
    assert "--budget" not in mine.reduced and "--max-epochs" not in mine.reduced


@pytest.mark.parametrize("argv", [["--full"], []])
def test_with_a_gpu_or_full_the_full_defaults_apply(argv, tmp_path):
    settings = _resolve(argv, have_gpu=not argv, tmp_path=tmp_path)
    assert settings.reduced == ""
    for key, value in asdict(FULL).items():
        if value is None and key == "grace_period":  # derived from the run's length
            value = default_grace_period(settings.max_epochs)
        assert getattr(settings, key) == value, key


def test_a_time_budget_without_num_samples_leaves_the_count_to_the_clock(tmp_path):
    settings = _resolve(["--time-budget", "10m"], have_gpu=True, tmp_path=tmp_path)
    assert settings.time_budget_s == 600 and settings.unlimited
    assert not _resolve(["--time-budget", "10m", "--num-samples", "8"], True, tmp_path).unlimited


def test_a_subset_of_the_search_keeps_the_whole_test_split():
    data = CifarData(train=separable_set(400), test=separable_set(300, seed=1), source="x")
    splits = make_splits(data, 100, subset=80, seed=0, subset_test=False)
    assert len(splits.train) == 80 and len(splits.val) == 20 and len(splits.test) == 300
    assert len(make_splits(data, 100, subset=80, seed=0).test) == 80  # training.train's way


def test_a_subset_larger_than_the_training_images_is_all_of_them():
    """The reduced run's default --subset (5,000) on a smaller dataset: all of its images,
    a quarter of them held out for validation."""
    data = CifarData(train=separable_set(400), test=separable_set(100, seed=1), source="x")
    splits = make_splits(data, 5000, subset=5000, seed=0, subset_test=False)
    assert len(splits.train) == 300 and len(splits.val) == 100 and len(splits.test) == 100


def test_too_few_training_images_for_the_validation_split_are_refused():
    data = CifarData(train=separable_set(400), test=separable_set(100, seed=1), source="x")
    with pytest.raises(TooFewTrainingImages, match="x has 400 training images.*5,000"):
        make_splits(data, 5000, seed=0)


def test_settings_from_another_version_are_refused_with_a_clear_error(tmp_path):
    exp = tmp_path / "old"
    exp.mkdir()
    saved = {"space": "tiny", "name": "old", "retired_option": 3}
    (exp / "search_settings.json").write_text(json.dumps(saved))
    args = build_parser().parse_args(["--name", "old", "--storage-path", str(tmp_path)])
    with pytest.raises(UsageError) as err:
        open_storage(args)
    message = str(err.value)
    assert "search_settings.json" in message and "retired_option" in message
    assert "another --name" in message


def test_help_answers_without_importing_torch_or_ray():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tune.search import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({'torch', 'ray', 'optuna'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--storage-path" in out.stdout  # the help printed
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]


def test_the_default_budget_written_in_the_cli_is_the_models_one():
    from models import DEFAULT_BUDGET

    assert FULL.budget == DEFAULT_BUDGET


@pytest.mark.parametrize(
    "flag", ["--reduction-factor", "--cpus-per-trial", "--storage-path", "--seed"]
)
def test_help_shows_the_defaults(flag):
    parser = build_parser()
    [action] = [a for a in parser._actions if flag in a.option_strings]
    shown = parser._get_formatter()._expand_help(action)  # the text --help prints
    assert f"(default: {action.default})" in shown, shown


def test_rays_token_is_made_readable_by_its_owner_alone(tmp_path):
    from tune.runner import keep_token_private

    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)  # as Ray writes it under the usual umask
    keep_token_private(token)
    assert token.stat().st_mode & 0o777 == 0o600
