"""Damaged experiment state: each state file is checked before a resume, a damaged one is
restored from its last good copy, and one without a copy stops the command with one message.
"""

from __future__ import annotations

import json
import logging
import pickle
import shlex
import shutil
import signal
import sqlite3
import time
import uuid
import zipfile
from pathlib import Path

import optuna
import pytest

from tests.conftest import write_python_batches
from tests.searchrun import (
    SEARCH_TIMEOUT,
    check_ok,
    cli,
    kill,
    read_results,
    read_table,
    run_as_user,
    search,
    start,
    trial_dirs,
)
from tune.state_files import (
    SNAPSHOT_DIR,
    DamagedExperiment,
    check_and_restore,
    keep_good_copies,
    problem,
    recover,
    state_files,
)

NAME = "exp"


def _study(path: Path, trials: int = 3) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=NAME, storage=f"sqlite:///{path}")
    for i in range(trials):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": float(i)},
                distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
                value=float(i),
            )
        )


def make_experiment(root: Path) -> Path:
    """An experiment folder with one file of each kind, as a search leaves them."""
    root.mkdir(parents=True)
    (root / "tuner.pkl").write_bytes(pickle.dumps({"tuner": list(range(50))}))
    (root / "experiment_state-2026-12-05_05-23-08.json").write_text(
        json.dumps({"trial_data": [["x" * 50, "y"]] * 5})
    )
    (root / "search_gen_state-2026-12-05_05-23-08.json").write_bytes(
        pickle.dumps({"counter": 4, "finished": False})
    )
    (root / "searcher-state-2026-12-05_05-23-08.pkl").write_text(
        json.dumps({"numbers": {"abc": 0, "def": 1}})
    )
    (root / "search_settings.json").write_text(json.dumps({"space": "tiny", "num_samples": 4}))
    _study(root / "study.db")
    trial = root / "trial_abc"
    (trial / "checkpoint_000002").mkdir(parents=True)
    (trial / "params.pkl").write_bytes(pickle.dumps({"lr": 0.1, "trial_number": 0}))
    (trial / "params.json").write_text(json.dumps({"lr": 0.1, "trial_number": 0}))
    with zipfile.ZipFile(trial / "checkpoint_000002" / "checkpoint.pt", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(list(range(2000))))
    (trial / "result.json").write_text('{"val_acc": 0.5, "epoch": 1}\n' * 3)
    return root


FILES = [
    "tuner.pkl",
    "experiment_state-2026-12-05_05-23-08.json",
    "search_gen_state-2026-12-05_05-23-08.json",
    "searcher-state-2026-12-05_05-23-08.pkl",
    "search_settings.json",
    "study.db",
    "trial_abc/params.pkl",
    "trial_abc/params.json",
    "trial_abc/checkpoint_000002/checkpoint.pt",
    "trial_abc/result.json",
]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x07garbage" * 64)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()


def test_every_state_file_of_an_experiment_is_found_and_reads_back_whole(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / NAME)
    found = {f.path: f.kind for f in state_files(root)}
    assert sorted(found) == sorted(FILES)
    assert found["search_gen_state-2026-12-05_05-23-08.json"] == "pickle"  # whatever its name
    assert all(problem(root / f, k) is None for f, k in found.items())


def _damages(hows: list[str]) -> list[tuple[str, str]]:
    # An empty result.json is whole: a trial that has not reported yet.
    return [
        (f, how)
        for f in FILES
        for how in hows
        if not (f.endswith("result.json") and how == "empty")
    ]


@pytest.mark.parametrize(
    ("relative", "how"), _damages(["truncated", "garbage", "empty", "missing"])
)
def test_a_damaged_file_with_a_good_copy_is_restored_from_it(
    tmp_path: Path, relative: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_experiment(tmp_path / NAME)
    assert keep_good_copies(root, {}) == len(FILES)
    original = (root / relative).read_bytes()
    damage(root / relative, how)
    kind = {f.path: f.kind for f in state_files(root / SNAPSHOT_DIR)}[relative]
    assert problem(root / relative, kind) is not None
    with caplog.at_level(logging.WARNING):
        assert recover(root) == [relative]
    assert problem(root / relative, kind) is None
    if relative != "study.db":  # copied through SQLite's backup API: same data, other bytes
        assert (root / relative).read_bytes() == original
    else:
        assert (
            len(optuna.load_study(study_name=NAME, storage=f"sqlite:///{root / relative}").trials)
            == 3
        )
    assert "restored it from its last good copy" in caplog.text and relative in caplog.text


@pytest.mark.parametrize(("relative", "how"), _damages(["truncated", "garbage", "empty"]))
def test_a_damaged_file_without_a_copy_stops_with_one_message(
    tmp_path: Path, relative: str, how: str
) -> None:
    root = make_experiment(tmp_path / NAME)
    damage(root / relative, how)
    with pytest.raises(DamagedExperiment) as raised:
        recover(root)
    e = raised.value
    assert list(e.damaged) == [relative]
    text = e.message("python -m tune.search --space tiny --warm-start exp --name exp-continued")
    assert str(root / relative) in text
    if relative != "study.db":
        assert "the Optuna study (study.db: 3 trials: 3 complete)" in text
        assert e.can_warm_start == (relative != "search_settings.json")
    else:
        assert "study.db:" not in text.split("Intact:")[1] and not e.can_warm_start
    assert "trial checkpoint(s)" in text and "--warm-start exp" in text


@pytest.mark.parametrize("relative", ["tuner.pkl", "search_gen_state-2026-12-05_05-23-08.json"])
def test_a_missing_ray_file_without_a_copy_is_damage(tmp_path: Path, relative: str) -> None:
    root = make_experiment(tmp_path / NAME)
    damage(root / relative, "missing")
    with pytest.raises(DamagedExperiment, match="missing"):
        recover(root)


def test_a_damaged_file_is_never_kept_as_a_good_copy(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / NAME)
    original = (root / "tuner.pkl").read_bytes()
    seen: dict = {}
    keep_good_copies(root, seen)
    damage(root / "tuner.pkl", "truncated")
    assert keep_good_copies(root, seen) == 0  # changed, but not whole: the old copy stays
    assert (root / SNAPSHOT_DIR / "tuner.pkl").read_bytes() == original
    assert recover(root) == ["tuner.pkl"]


def test_a_new_experiment_has_nothing_to_check(tmp_path: Path) -> None:
    (tmp_path / NAME).mkdir()
    assert recover(tmp_path / NAME) == []
    assert check_and_restore(tmp_path / "not-there").damaged == {}


def test_a_database_being_written_is_copied_consistently(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / NAME)
    conn = sqlite3.connect(root / "study.db")
    conn.execute("BEGIN IMMEDIATE")  # the study mid-transaction
    conn.execute("UPDATE trials SET state = 'RUNNING'")
    keep_good_copies(root, {})
    conn.rollback()
    conn.close()
    copy = root / SNAPSHOT_DIR / "study.db"
    states = sqlite3.connect(copy).execute("SELECT DISTINCT state FROM trials").fetchall()
    assert states == [("COMPLETE",)]


# --- end to end: a search killed, a file cut in half, the same command again -----------------


def _killed_search(tmp_path: Path, data_dir: Path, name: str) -> tuple[list[str], Path]:
    """A tiny search SIGTERM'd once two trials have finished; its args and folder."""
    args = cli(
        space="tiny",
        data=data_dir,
        num_samples=4,
        max_epochs=3,
        grace_period=3,  # ASHA stops none
        subset=200,
        finalists=0,
        skip_retrain=True,
        cpus_per_trial=2,  # one trial at a time
        checkpoint_every=0,
        storage_path=tmp_path / "exp",
        name=name,
    )
    exp = tmp_path / "exp" / name
    marker = uuid.uuid4().hex
    out = tmp_path / "first"
    proc = start(args, out, marker)
    deadline = time.monotonic() + SEARCH_TIMEOUT

    def finished() -> int:
        return sum(1 for d in trial_dirs(exp) if len(read_results(d)) >= 3)

    while proc.poll() is None and finished() < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, (out / "stderr.txt").read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    finally:
        kill(proc, marker)
    return args, exp


def _cut_in_half(exp: Path, pattern: str) -> Path:
    [path] = sorted(exp.glob(pattern))[-1:]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_python_batches(tmp_path / "data", n_train=400, n_test=100)


@pytest.mark.slow
# End to end for one of Ray's files and the project's study (each run is a killed search and
# its resume, minutes in CI); every file kind is damaged and restored in the tests above, and
# docs/reliability.md gives the end-to-end outcome for each.
@pytest.mark.parametrize("pattern", ["tuner.pkl", "study.db"])
def test_a_search_killed_with_a_file_cut_in_half_resumes_from_its_good_copy(
    tmp_path: Path, data_dir: Path, pattern: str
) -> None:
    args, exp = _killed_search(tmp_path, data_dir, "cut")
    damaged = _cut_in_half(exp, pattern)
    run = search(args, tmp_path / "again")
    check_ok(run)
    assert f"{damaged} was damaged" in run.stderr and "restored it" in run.stderr
    # Nothing lost, nothing repeated: 4 trials, each once in the study and the table, with
    # the same epochs and values in both.
    table = read_table(exp)
    assert len(table) == 4 and table["config/trial_number"].is_unique
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{exp}/study.db")
    assert sorted(t.number for t in study.trials) == sorted(table["config/trial_number"])
    by_number = {t.number: t for t in study.trials}
    for row in table.to_dict("records"):
        trial = by_number[row["config/trial_number"]]
        assert row["status"] == "completed" and trial.state.name == "COMPLETE", row["trial_id"]
        epochs = {r["training_iteration"]: r["val_acc"] for r in read_results(Path(row["path"]))}
        assert trial.intermediate_values == epochs, row["trial_id"]
        assert trial.value == pytest.approx(row["score"])


@pytest.mark.slow
def test_a_damaged_file_without_a_copy_stops_a_users_resume_with_one_message(
    tmp_path: Path, data_dir: Path
) -> None:
    args, exp = _killed_search(tmp_path, data_dir, "nocopy")
    shutil.rmtree(exp / SNAPSHOT_DIR)
    damaged = _cut_in_half(exp, "experiment_state-*.json")
    run = run_as_user(["-m", "tune.search", *args], tmp_path / "again", tmp_path / "home", 120)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout
    [line] = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert str(damaged) in line and "cannot be resumed" in line
    assert "the Optuna study (study.db:" in line and "trial checkpoint(s)" in line
    carry_on = shlex.split(line.split(": ")[-1])
    assert carry_on[1:3] == ["-m", "tune.search"]
    assert carry_on[carry_on.index("--warm-start") + 1] == "nocopy"
    assert "starting Ray" not in run.stderr + run.stdout  # stopped before Ray starts


def test_the_copy_of_a_checkpoint_ray_replaced_is_dropped(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / NAME)
    seen: dict = {}
    keep_good_copies(root, seen)
    trial = root / "trial_abc"
    (trial / "checkpoint_000002").rename(trial / "checkpoint_000003")  # Ray's next one
    keep_good_copies(root, seen)
    copies = root / SNAPSHOT_DIR / "trial_abc"
    assert sorted(p.name for p in copies.iterdir() if p.is_dir()) == ["checkpoint_000003"]


def test_the_command_that_carries_on_starts_a_new_experiment_warm_started_where_it_can(
    tmp_path: Path,
) -> None:
    from tune.api import carry_on_command

    root = make_experiment(tmp_path / NAME)
    argv = ["--space", "tiny", "--name", NAME, "--resume", "--num-samples", "4"]
    damage(root / "tuner.pkl", "truncated")
    with pytest.raises(DamagedExperiment) as raised:
        recover(root)
    command = shlex.split(carry_on_command(argv, raised.value))
    assert command[3:] == ["--space", "tiny", "--num-samples", "4", "--warm-start", NAME] + [
        "--name",
        f"{NAME}-continued",
    ]
    damage(root / "study.db", "garbage")
    with pytest.raises(DamagedExperiment) as raised:
        recover(root)
    assert "--warm-start" not in carry_on_command(argv, raised.value)
