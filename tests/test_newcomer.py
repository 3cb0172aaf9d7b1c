"""A newcomer's first hour (issue 30): every command line the search prints works pasted into
the shell that ran it, a mistake is refused before torch is imported, every plot and number
of the report says what it is, and no long step is silent."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from tests.conftest import separable_set, write_python_batches
from tests.searchrun import (
    ROOT,
    SEARCH_TIMEOUT,
    cli,
    end_leftovers,
    kill,
    read_results,
    search,
    search_env,
    start,
    trial_dirs,
)
from tune import results
from tune.cli import SPACE_NAMES, beside_interpreter, interpreter, pasteable

# --- mistakes answer at once ------------------------------------------------------------------


@pytest.fixture
def no_torch(tmp_path: Path) -> dict[str, str]:
    """An environment in which importing torch or ray fails: what is refused there was refused
    without them."""
    fake = tmp_path / "fake_packages"
    for name in ("torch", "ray"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(
            f"raise ImportError('the test forbids {name} here: this must answer without it')\n"
        )
    return {"PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--space", "nope"], ["unknown search space 'nope'", *SPACE_NAMES]),
        (["--space", "tiny", "--data", "missing"], ["--data missing does not exist"]),
        (["--space", "tiny", "--num-samples", "0"], ["--num-samples is 0"]),
    ],
    ids=["space", "data", "num-samples"],
)
def test_a_mistake_is_refused_without_importing_torch(
    tmp_path: Path, no_torch: dict[str, str], args: list[str], expected: list[str]
) -> None:
    storage = tmp_path / "exp"
    run = search([*args, "--storage-path", str(storage)], tmp_path / "run", 60, env=no_torch)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "forbids" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1].startswith("error: "), run.stderr
    for text in expected:
        assert text in run.stderr, (text, run.stderr)
    assert not storage.exists()


def test_the_space_names_are_the_spaces() -> None:
    from search_spaces import SPACES

    assert tuple(SPACES) == SPACE_NAMES


def test_a_mistyped_option_is_an_error_not_the_option_it_begins(tmp_path: Path) -> None:
    run = search(["--num-sample", "3", "--list-spaces"], tmp_path / "run", 60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "unrecognized arguments: --num-sample 3" in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("module", "argv", "typo"),
    [
        ("training.train", ["--out", "o", "--epoch", "3"], "--epoch"),
        (
            "training.predict",
            ["--checkpoint", "c", "--input", "i", "--out", "o", "--no-tt"],
            "--no-tt",
        ),
        ("models.summary", ["--lis"], "--lis"),
        ("benchmarks.campaign", ["--rehears"], "--rehears"),
    ],
)
def test_every_command_refuses_an_abbreviated_option(
    module: str, argv: list[str], typo: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"unrecognized arguments: {typo}" in run.stderr, run.stderr


def test_a_failed_download_leaves_no_empty_cache_folder(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    from training.data import DataError, load_cifar10

    # Nothing listens on the discard port: the download fails as it does offline, inside
    # torchvision, after it made its folder.
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz"
    )
    (tmp_path / "home").mkdir()
    cache = tmp_path / "home" / ".cache" / "resnet-tune"
    with pytest.raises(DataError, match="--data"):
        load_cifar10(None, cache_dir=cache)
    assert list((tmp_path / "home").iterdir()) == []

    # A cache folder that was there before stays, with what it held.
    cache.mkdir(parents=True)
    (cache / "kept.txt").write_text("mine")
    with pytest.raises(DataError):
        load_cifar10(None, cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == ["kept.txt"]


# --- command lines that work when pasted --------------------------------------------------------


def test_a_path_is_written_as_the_shell_runs_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert pasteable(tmp_path / ".venv" / "bin" / "python") == ".venv/bin/python"
    assert pasteable(tmp_path / "python") == "./python"  # not a bare name looked up in PATH
    assert pasteable(Path("/usr/bin/python3")) == "/usr/bin/python3"

    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "tensorboard").write_text("")
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    assert interpreter() == ".venv/bin/python"
    assert beside_interpreter("tensorboard") == ".venv/bin/tensorboard"
    assert beside_interpreter("optuna-dashboard") == "optuna-dashboard"  # not installed here


def _shell_without_the_venv(marker: str) -> dict[str, str]:
    """The environment of a shell that ran `.venv/bin/python -m tune.search`: the venv's
    folder is not on its PATH, and no venv is active."""
    env = search_env(marker)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.pop("VIRTUAL_ENV", None)
    return env


def _paste(line: str, out: Path, timeout: float = SEARCH_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `line` as pasted into that shell (bash), from the folder the search ran in."""
    marker = uuid.uuid4().hex
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            ["bash", "-c", line],
            cwd=ROOT,
            env=_shell_without_the_venv(marker),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc, marker)
            pytest.fail(f"{line} ran over {timeout} s")
        finally:
            end_leftovers(marker)
    return subprocess.CompletedProcess(
        line, proc.returncode, (out / "stdout.txt").read_text(), (out / "stderr.txt").read_text()
    )


def _with_version_flag(command: str) -> str:
    """A printed tensorboard or optuna-dashboard command, made to print its version and exit
    (the same executable, found the same way) instead of serving."""
    executable = shlex.split(command)[0]
    flag = "--version_tb" if Path(executable).name == "tensorboard" else "--version"
    return shlex.join([executable, flag])


@pytest.mark.slow
def test_the_lines_a_search_prints_work_pasted_into_the_shell_that_ran_it(tmp_path: Path) -> None:
    """Ctrl-C, then the resume line pasted into a shell whose PATH lacks the venv (as after
    `.venv/bin/python -m tune.search ...`): it resumes and finishes; the TensorBoard line it
    ends with and report.md's commands run there too. Along the way: Ray's live table shows
    the main run's validation accuracy, and every trial's progress.csv has it."""
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    storage, name = tmp_path / "exp", "pasted"
    args = cli(
        space="tiny",
        data=data,
        num_samples=2,
        max_epochs=3,
        subset=200,
        finalists=0,
        skip_retrain=True,
        cpus_per_trial=2,  # one trial at a time
        storage_path=storage,
        name=name,
    )
    exp = storage / name
    marker, out = uuid.uuid4().hex, tmp_path / "first"
    proc = start(args, out, marker)
    deadline = time.monotonic() + SEARCH_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if sum(len(read_results(d)) for d in trial_dirs(exp)) >= 1:
            break
        time.sleep(0.1)
    else:
        kill(proc, marker)
        pytest.fail("no epoch was reported:\n" + (out / "stderr.txt").read_text()[-3000:])
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
    try:
        proc.wait(timeout=90)
    finally:
        end_leftovers(marker)
    stderr = (out / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    [line] = [x.split("resume with: ", 1)[1] for x in stderr.splitlines() if "resume with: " in x]

    resumed = _paste(line, tmp_path / "resumed")
    assert resumed.returncode == 0, (line, resumed.stdout[-3000:], resumed.stderr[-3000:])
    assert (exp / "report.md").exists()

    # Ray's live table has the main run's validation accuracy, and so does every epoch's row.
    assert "val_acc (main run)" in resumed.stdout, resumed.stdout[-3000:]
    assert re.search(r"Current best trial: \w+ with stable_val_acc=", resumed.stdout)
    for trial in trial_dirs(exp):
        progress = pd.read_csv(trial / "progress.csv")
        assert progress["stable_val_acc"].notna().all(), trial

    # The TensorBoard line and the report's commands run in the same shell.
    [tensorboard] = [
        x.split("TensorBoard: ", 1)[1] for x in resumed.stdout.splitlines() if "TensorBoard: " in x
    ]
    report = (exp / "report.md").read_text()
    commands = re.findall(r"`((?:\S*/)?(?:tensorboard|optuna-dashboard) [^`]+)`", report)
    assert len(commands) == 2, report.split("## Files")[1]
    for command in (tensorboard, *commands):
        ran = _paste(_with_version_flag(command), tmp_path / "tool", timeout=120)
        assert ran.returncode == 0, (command, ran.stderr[-2000:])


# --- plots and numbers that say what they are ---------------------------------------------------


@pytest.fixture
def figures(monkeypatch) -> dict[str, object]:
    """The report's figures by file name, kept open to be read back (and saved as usual)."""
    kept: dict[str, object] = {}
    real_save = results._save

    def keep(fig, path: Path) -> None:
        kept[Path(path).name] = fig
        real_save(fig, path)

    monkeypatch.setattr(results, "_save", keep)
    plt.close("all")
    return kept


SETTINGS = {"name": "x", "space": "tiny", "budget": 60_000, "max_epochs": 6, "seed": 0}


def _trial(
    trial_id: str, status: str, params: int, score: float, best: float, epochs: int = 6
) -> dict:
    return {
        "trial_id": trial_id,
        "role": "search",
        "status": status,
        "params": params,
        "score": score,
        "best_val_acc": best,
        "final_val_acc": best,
        "stages": "1x8",
        "epochs_run": epochs,
        "train_seconds": 1.0,
    }


def test_the_learning_curves_plot_the_main_run_and_mark_the_rung_branches(
    tmp_path: Path, figures: dict
) -> None:
    # A rung at epoch 2: val_acc there is the decay branch's (0.40), above the main run's
    # (0.35); the next epoch is the main run's again.
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4, 5, 6],
            "val_acc": [0.20, 0.40, 0.37, 0.41, 0.45, 0.47],
            "stable_val_acc": [0.20, 0.35, 0.37, 0.41, 0.45, 0.47],
        }
    )
    # A trial written before every epoch reported stable_val_acc: only its rung has one.
    older = history.assign(
        stable_val_acc=[float("nan"), 0.33, float("nan"), float("nan"), float("nan"), float("nan")]
    )
    table = pd.DataFrame(
        [_trial("a", "completed", 1000, 0.47, 0.47), _trial("b", "completed", 900, 0.47, 0.47)]
    )
    results.write_report(
        tmp_path, table, {"a": history, "b": older}, [(2, 2)], None, None, None, SETTINGS
    )
    ax = figures["curves.png"].axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["a"].get_ydata()) == pytest.approx([20, 35, 37, 41, 45, 47])
    assert list(lines["b"].get_ydata()) == pytest.approx([20, 33, 37, 41, 45, 47])
    branches = {c.get_gid(): c.get_offsets().tolist() for c in ax.collections if c.get_gid()}
    assert branches == {"branch:a": [[2, 40]], "branch:b": [[2, 40]]}
    assert any("decay branch" in text.get_text() for text in ax.get_legend().get_texts())
    report = (tmp_path / "report.md").read_text()
    assert "Triangles: at an ASHA rung" in report


def test_accuracy_against_size_compares_the_scores_of_finished_trials(
    tmp_path: Path, figures: dict
) -> None:
    table = pd.DataFrame(
        [
            _trial("small", "completed", 100, 0.50, 0.53),
            _trial("dominated", "completed", 200, 0.45, 0.56),  # bigger, lower score
            # Stopped after its first rung: a lucky branch value, no score.
            _trial("stopped", "stopped_early", 150, float("nan"), 0.90, epochs=2),
            _trial("big", "completed", 900, 0.70, 0.72),
            _trial("broken", "failed", 50, float("nan"), 0.99, epochs=1),
        ]
    )
    assert list(results.pareto_frontier(table)["trial_id"]) == ["small", "big"]
    results.write_report(tmp_path, table, {}, [(2, 5)], None, None, None, SETTINGS)
    ax = figures["params_vs_acc.png"].axes[0]
    [frontier] = [line for line in ax.lines if line.get_label() == "Pareto frontier"]
    assert list(frontier.get_xdata()) == pytest.approx([0.1, 0.9])  # thousands
    assert list(frontier.get_ydata()) == pytest.approx([50, 70])
    [points] = ax.collections
    plotted = sorted((round(x, 6), round(y, 6)) for x, y in points.get_offsets().tolist())
    assert plotted == [(0.1, 50), (0.2, 45), (0.9, 70)]
    assert "score" in ax.get_ylabel()
    notes = " ".join(t.get_text() for t in figures["params_vs_acc.png"].texts)
    assert "1 stopped early" in notes and "1 failed" in notes
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Accuracy against size")[1].split("## ")[0]
    assert "| small | 100 | 1x8 | 50.00% |" in section and "| stopped |" not in section


def test_importances_from_too_few_trials_say_so(tmp_path: Path, figures: dict) -> None:
    table = pd.DataFrame([_trial(str(i), "completed", 100 + i, 0.5, 0.5) for i in range(6)])
    importances = {"lr": 0.6, "size": 0.3, "dropout": 0.1}
    kwargs = {"importances_basis": "the 6 completed trials", "importances_trials": 6}
    results.write_report(tmp_path, table, {}, [], None, None, None, SETTINGS, importances, **kwargs)
    section = (tmp_path / "report.md").read_text().split("## Which parameters mattered")[1]
    assert "With 6 trials this is a hint, not a ranking" in section
    assert "at least 41 trials" in section
    assert "a hint, not a ranking" in figures["importances.png"].axes[0].get_title()

    kwargs["importances_trials"] = 64
    results.write_report(tmp_path, table, {}, [], None, None, None, SETTINGS, importances, **kwargs)
    assert "hint" not in (tmp_path / "report.md").read_text()


def test_the_importances_count_the_trials_they_were_measured_over() -> None:
    from tune.finalize import importance_trials

    few = pd.DataFrame(
        [_trial("a", "completed", 1, 0.5, 0.5)]
        + [_trial(f"s{i}", "stopped_early", 1, float("nan"), 0.3, epochs=2) for i in range(5)]
        + [_trial("e", "error", 1, float("nan"), float("nan"), epochs=0)]
    )
    assert importance_trials(few) == 6  # too few completed: every trial that reported
    many = pd.DataFrame([_trial(f"c{i}", "completed", 1, 0.5, 0.5) for i in range(7)])
    assert importance_trials(pd.concat([many, few])) == 8  # the completed ones


def test_the_report_says_what_each_number_is(tmp_path: Path) -> None:
    table = pd.DataFrame([_trial("a", "completed", 100, 0.5, 0.5)])
    final = {
        "test_acc": [0.51, 0.53],
        "test_acc_mean": 0.52,
        "test_acc_std": 0.014,
        "test_acc_tta": [0.51, 0.53],
        "test_acc_tta_mean": 0.52,
        "test_acc_tta_std": 0.014,
        "test_acc_plain": [0.49, 0.50],
        "test_acc_plain_mean": 0.495,
        "test_acc_plain_std": 0.007,
        "ensemble_test_acc": 0.55,
        "epochs": 6,
        "test_images": 10_000,
        "train_config": {"tta_flip": True},
    }
    best = {"trial_id": "a", "params": 100, "score": 0.5, "stages": "1x8"}
    settings = {**SETTINGS, "reduced": "no GPU found, so the options left unset take small values"}
    results.write_report(tmp_path, table, {}, [], best, final, None, settings)
    report = (tmp_path / "report.md").read_text()
    assert "take small values." in report  # a sentence ends with a full stop
    retrained = report.split("## The winner retrained on train + validation")[1].split("##")[0]
    assert "- with flip TTA: mean 52.00% ± 1.40% (per seed: 51.00%, 53.00%)" in retrained
    assert "- without TTA: mean 49.50% ± 0.70%" in retrained
    assert "averaged (with flip TTA): 55.00%" in retrained
    assert "test-time augmentation" in retrained and "10,000 test images" in retrained
    comparison = report.split("## The winner against the best seed network")[1]
    assert "seed reports this project starts from" in comparison.split("|")[0]


# --- no silent minutes ----------------------------------------------------------------------------


def test_the_retrain_says_what_it_tests_pass_by_pass(tmp_path: Path, caplog) -> None:
    import logging

    from models import get_arch
    from training.recipes import get_recipe
    from tune.retrain import retrain

    cfg = get_recipe("smoke", epochs=1, batch_size=32)
    with caplog.at_level(logging.INFO):
        retrain(
            get_arch("tiny_resnet"),
            cfg,
            separable_set(64),
            separable_set(40, seed=1),
            tmp_path / "final",
            seeds=[3, 4],
            device="cpu",
        )
    messages = [r.getMessage() for r in caplog.records]
    assert sum("testing on 40 test images" in m for m in messages) == 2  # each seed's own
    passes = [m for m in messages if m.startswith("tested seed")]
    assert [m.split(":")[0] for m in passes] == [
        "tested seed 3 with flip TTA (1/4)",
        "tested seed 4 with flip TTA (2/4)",
        "tested seed 3 without flip TTA (3/4)",
        "tested seed 4 without flip TTA (4/4)",
    ]


def _fake_python(root: Path, install_seconds: int) -> Path:
    """A folder with a `python3` whose venv's pip install takes `install_seconds` in silence,
    as pip -q does: setup.sh runs end to end without a download."""
    bin_dir = root / "fakebin"
    bin_dir.mkdir()
    venv_python = f"""#!/usr/bin/env bash
if [ "$1 $2" = "-m pip" ]; then
    case " $* " in *" -e "*) sleep {install_seconds} ;; esac
    exit 0
fi
echo "torch fake torchvision fake"
"""
    python3 = f"""#!/usr/bin/env bash
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin"
    printf 'export PATH="%s/bin:$PATH"\\n' "$PWD/$3" > "$3/bin/activate"
    cat > "$3/bin/python" <<'EOF'
{venv_python}EOF
    chmod +x "$3/bin/python"
    exit 0
fi
echo "Python 3.11 (fake)"
"""
    (bin_dir / "python3").write_text(python3)
    (bin_dir / "python3").chmod(0o755)
    return bin_dir


@pytest.mark.skipif(shutil.which("bash") is None, reason="setup.sh is a bash script")
def test_setup_says_how_far_its_long_install_has_come(tmp_path: Path) -> None:
    tree = tmp_path / "clone"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", tree / "scripts" / "setup.sh")
    fake = _fake_python(tmp_path, install_seconds=6)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    env["SETUP_HEARTBEAT_S"] = "1"
    env.pop("VIRTUAL_ENV", None)
    ran = subprocess.run(
        ["bash", str(tree / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("setup: creating .venv"), ran.stdout
    # A line every second of the 6 s install (at least two, however loaded the machine).
    assert sum(line.startswith("setup: installing: ") for line in lines) >= 2, ran.stdout
    assert "s so far, .venv holds" in ran.stdout


def test_data_too_small_for_the_validation_split_is_refused_naming_the_fix(tmp_path: Path):
    """--full holds out 5,000 validation images: on 300 the command says so, names --subset
    and writes no experiment (a rerun with the same name starts afresh)."""
    data = write_python_batches(tmp_path / "data", n_train=300, n_test=100)
    args = cli(space="tiny", data=data, full=True, storage_path=tmp_path / "exp", name="small")
    run = search(args, tmp_path / "run")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "300 training images: too few to hold out 5,000" in run.stderr
    assert "pass --subset N" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "exp" / "small").exists()


def test_the_trial_count_shown_is_the_configurations_asked_for() -> None:
    """The searcher counts --num-samples (Ray's own count is unlimited): the progress shows
    the configurations asked for, and no count with --time-budget alone."""
    import types

    from tune.trial_table import TrialTable, trial_line

    unlimited = sys.maxsize  # what Ray makes of num_samples=-1
    counted, timed, fixed = TrialTable(6), TrialTable(), TrialTable()
    counted.setup(total_samples=unlimited)
    timed.setup(total_samples=unlimited)
    fixed.setup(total_samples=5)  # the seed baselines: Ray's count is theirs
    trial = types.SimpleNamespace(
        last_result={"training_iteration": 2}, config={}, status="TERMINATED", trial_id="t1"
    )
    lines = [trial_line(trial, 1, t._total_samples) for t in (counted, timed, fixed)]
    assert [line.split()[0] for line in lines] == ["[1/6]", "[1]", "[1/5]"]
