"""tune.api: the search from Python. The command's options as keyword arguments, its errors
as exceptions with its messages, nothing left installed after a call, two searches in one
process, and the result object: the same when loaded from the folder, and predicting on
arrays and image files."""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from search_spaces import get_space
from tests.conftest import write_python_batches
from tests.searchrun import run_as_user
from tests.searchrun import search as run_command
from tune import api
from tune.cli import build_parser


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_python_batches(tmp_path / "data", n_train=400, n_test=100)


def test_the_keyword_arguments_are_the_commands_options() -> None:
    parser = build_parser()
    options = {
        a.dest: a.default
        for a in parser._actions
        if a.dest not in ("help", "list_spaces", "address")
    }
    parameters = inspect.signature(api.search).parameters
    assert {k: p.default for k, p in parameters.items() if k != "address"} == options
    # --address defaults to $RAY_ADDRESS, which the command's parser reads as it does.
    assert parameters["address"].default is None


def _bad_input_cases(data: Path) -> list[tuple[dict, list[str]]]:
    smallest = get_space("tiny").smallest_params()
    return [
        ({"space": "nope", "data": data}, ["'nope'", "efficient_resnet, seeds, tiny"]),
        (
            {"space": "tiny", "data": data.parent / "missing"},
            ["--data", "missing", "does not exist", "CIFAR-10 folder or archive"],
        ),
        (
            {"space": "tiny", "data": data, "budget": 1000},
            ["--budget 1,000", f"at least {smallest:,}", "tiny"],
        ),
        ({"space": "tiny", "data": data, "num_samples": 0}, ["--num-samples", "is 0", "positive"]),
        ({"space": "tiny", "data": data, "budget": "many"}, ["--budget", "invalid int", "many"]),
    ]


@pytest.mark.parametrize(
    "case", range(5), ids=["space", "data", "budget", "num-samples", "budget-type"]
)
def test_bad_input_raises_the_commands_message_and_leaves_nothing_installed(
    tmp_path: Path, data_dir: Path, case: int
) -> None:
    options, expected = _bad_input_cases(data_dir)[case]
    storage = tmp_path / "exp"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    environ = dict(os.environ)
    with pytest.raises(api.SearchError) as raised:
        api.search(**options, storage_path=storage, name="x")
    message = str(raised.value)
    for text in expected:
        assert text in message, (text, message)
    assert raised.value.exit_code == 2
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert dict(os.environ) == environ
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    assert not storage.exists()


@pytest.mark.parametrize("case", [0, 3], ids=["space", "num-samples"])
def test_the_message_is_the_commands_error_line(tmp_path: Path, data_dir: Path, case: int) -> None:
    options, _ = _bad_input_cases(data_dir)[case]
    with pytest.raises(api.SearchError) as raised:
        api.search(**options, storage_path=tmp_path / "exp")
    argv = []
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    run = run_command([*argv, "--storage-path", str(tmp_path / "exp")], tmp_path / "run", 120)
    assert run.returncode == raised.value.exit_code
    assert run.stderr.strip().splitlines()[-1] == f"error: {raised.value}"


# Run as a user runs it: `python -c` in a fresh environment (no RAY_* variable, a new HOME).
TWO_SEARCHES = r"""
import json, os, signal, sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import load_cifar10
from tune.api import SearchError, load, search

data, storage = sys.argv[1], sys.argv[2]
options = dict(space="tiny", data=data, num_samples=2, max_epochs=2, subset=200, finalists=0,
               retrain_seeds=2, cpus_per_trial=2, storage_path=storage)
handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
environ = dict(os.environ)
out = {}
results = [search(name="first", **options), search(name="second", **options)]
import ray

out["ray_running"] = ray.is_initialized()
out["handlers_restored"] = all(signal.getsignal(s) is h for s, h in handlers.items())
out["env_changed"] = sorted(k for k in set(environ) | set(os.environ)
                            if environ.get(k) != os.environ.get(k))
out["loaded_equal"] = [load(r.folder) == r for r in results]
out["folders"] = [str(r.folder) for r in results]
# A finished experiment named again: the same winner, its retrained seeds kept (tested again).
again = search(name="first", **options)
out["again_equal"] = [again.winner == results[0].winner,
                      again.final["test_acc"] == results[0].final["test_acc"]]
r = results[1]
out["winner"] = r.winner.trial_id
out["leaderboard"] = r.leaderboard()["trial_id"].tolist()
out["tta"], out["plain"] = r.test_acc_tta.per_seed, r.test_acc_plain.per_seed
out["ensemble"] = r.final["ensemble_test_acc"]
test = load_cifar10(data).test
images = test.images.permute(0, 2, 3, 1).numpy()
out["accuracy"] = float((r.predict(images) == test.labels.numpy()).mean())
out["array"] = r.predict(images[:4]).tolist()
for fmt in ("png", "jpeg"):
    paths = []
    for i in range(4):
        paths.append(Path(storage) / f"test{i}.{fmt}")
        Image.fromarray(images[i]).save(paths[-1], quality=95)
    out[fmt] = r.predict(paths).tolist()
out["one_file"] = r.predict(str(paths[0])).tolist()
try:
    search(**{**options, "num_samples": 0})
except SearchError as e:
    out["error"] = str(e)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_two_searches_in_one_process_return_results_and_leave_nothing_behind(
    tmp_path: Path, data_dir: Path
) -> None:
    storage = tmp_path / "exp"
    storage.mkdir()
    run = run_as_user(
        ["-c", TWO_SEARCHES, str(data_dir), str(storage)],
        tmp_path / "run",
        tmp_path / "home",
        timeout=900,
        extra={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [line] = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["ray_running"] is False
    assert out["handlers_restored"] is True
    assert out["env_changed"] == []
    assert out["loaded_equal"] == [True, True]
    assert out["folders"] == [str(storage / "first"), str(storage / "second")]
    assert out["again_equal"] == [True, True]
    best = json.loads((storage / "second" / "best_config.json").read_text())
    assert out["winner"] == best["trial_id"] == out["leaderboard"][0]
    metrics = json.loads((storage / "second" / "final" / "metrics.json").read_text())
    assert out["tta"] == metrics["test_acc_tta"] and out["plain"] == metrics["test_acc_plain"]
    # The seeds' averaged predictions, as the retrain measured them on the same test images.
    assert out["accuracy"] == pytest.approx(out["ensemble"], abs=0.02)
    assert out["png"] == out["jpeg"] == out["array"]
    assert out["one_file"] == out["array"][:1]
    assert "--num-samples is 0" in out["error"]


def test_predict_refuses_images_of_the_wrong_shape() -> None:
    import numpy as np

    from tune.search_result import _as_images

    assert tuple(_as_images(np.zeros((2, 32, 32, 3), np.uint8)).shape) == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\)"):
        _as_images(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        _as_images(np.zeros((2, 32, 32, 3), np.float32))


def test_load_refuses_a_folder_that_is_no_finished_experiment(tmp_path: Path) -> None:
    from tune.search_result import ResultError

    with pytest.raises(ResultError, match="not a finished experiment"):
        api.load(tmp_path)


def test_the_report_leaves_a_notebooks_matplotlib_backend_as_it_was(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')  # standing in for a notebook's inline backend\n"
        "import pandas as pd\n"
        "from tune import results\n"
        "table = pd.DataFrame([{'trial_id': 'a', 'role': 'search', 'status': 'completed',\n"
        "    'params': 1000, 'score': 0.5, 'best_val_acc': 0.5, 'stages': '1x8',\n"
        "    'epochs_run': 2, 'train_seconds': 1.0}])\n"
        "history = pd.DataFrame({'epoch': [1, 2], 'val_acc': [0.4, 0.5]})\n"
        "results.write_report(sys.argv[1], table, {'a': history}, [(1, 1)], None, None, None,\n"
        "    {'name': 'x', 'space': 'tiny', 'budget': 60000, 'max_epochs': 2, 'seed': 0})\n"
        "print(matplotlib.get_backend())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "svg"
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
