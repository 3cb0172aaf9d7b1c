"""examples/search.ipynb in a real Jupyter kernel (nbclient with ipykernel, as a notebook
server runs it), on tiny data: run through; stopped with the kernel's interrupt (the stop
button) and run again; its kernel killed mid-search (a lost Colab runtime) and resumed from a
new kernel, the experiment kept on a drive as the README says."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.manager import KernelManager  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

from tests.conftest import write_python_batches  # noqa: E402
from tests.searchrun import (  # noqa: E402
    ROOT,
    SEARCH_TIMEOUT,
    end_leftovers,
    read_results,
    read_table,
    trial_dirs,
    user_env,
)

NOTEBOOK = ROOT / "examples" / "search.ipynb"
SEARCH_CELL = 2  # the cell that runs the search
# Small enough for a 2-core CPU; ASHA stops none (grace period = epochs).
TINY = {
    "num_samples": 3,
    "max_epochs": 3,
    "grace_period": 3,
    "subset": 200,
    "retrain_seeds": 2,
    "cpus_per_trial": 2,
    "finalists": 0,
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_python_batches(tmp_path / "data", n_train=400, n_test=100)


class Kernel:
    """The notebook in a kernel of its own, started in a user's environment."""

    def __init__(self, tmp_path: Path, marker: str, env: dict[str, str]) -> None:
        self.nb = nbformat.read(NOTEBOOK, as_version=4)
        self.client = nbclient.NotebookClient(
            self.nb,
            timeout=2 * SEARCH_TIMEOUT,
            kernel_name="python3",
            kernel_manager_class=KernelManager,
            resources={"metadata": {"path": str(ROOT)}},
        )
        self.env = user_env(marker, tmp_path / "home", {"PYTHONPATH": str(ROOT), **env})
        (tmp_path / "home").mkdir(exist_ok=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Kernel]:
        with self.client.setup_kernel(env=self.env):
            yield self

    def run(self, index: int) -> dict:
        return self.client.execute_cell(self.nb.cells[index], index)

    def run_all(self) -> None:
        for index, cell in enumerate(list(self.nb.cells)):
            if cell.cell_type == "code":
                self.run(index)

    def code(self, source: str) -> str:
        """Run `source` in the kernel; its printed text."""
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return _text(cell)

    @property
    def pid(self) -> int:
        return self.client.km.provisioner.process.pid


def _text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
            parts.append(out["data"].get("text/markdown", ""))
        elif out.get("output_type") == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "".join(parts)


def _env(data: Path, storage: Path, name: str, **options: object) -> dict[str, str]:
    return {
        "SEARCH_DATA": str(data),
        "SEARCH_STORAGE": str(storage),
        "SEARCH_NAME": name,
        "SEARCH_OPTIONS": json.dumps({**TINY, **options}),
    }


def _when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """In the background: `action` once `condition` holds (checked for SEARCH_TIMEOUT s)."""

    def watch() -> None:
        deadline = time.monotonic() + SEARCH_TIMEOUT
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _epochs_reported(exp: Path) -> int:
    return sum(len(read_results(d)) for d in trial_dirs(exp))


def _study_agrees_with_table(exp: Path, name: str, max_epochs: int, killed: bool = False) -> None:
    """Trial by trial, the Optuna study says what trained: trials.parquet's status, epochs
    and score. `killed`: a process killed between the searcher's ask and Ray's next save of
    its experiment (every 5 s) leaves a study trial that Ray never ran; the finished search
    marks it FAIL, "never ran", and it is in no table."""
    import optuna

    table = read_table(exp)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp}/study.db")
    by_number = {t.number: t for t in study.trials}
    states = {
        n: (t.state.name, len(t.intermediate_values), t.user_attrs) for n, t in by_number.items()
    }
    assert len(table) == TINY["num_samples"], table
    ran = set(table["config/trial_number"])
    never_ran = {n: t for n, t in by_number.items() if n not in ran}
    if killed:
        for t in never_ran.values():
            assert t.state.name == "FAIL" and "never ran" in t.user_attrs.get("failure", ""), states
            assert not t.intermediate_values, states
    else:
        assert not never_ran, states
    for row in table.to_dict("records"):
        trial = by_number[row["config/trial_number"]]
        assert row["status"] == "completed" and trial.state.name == "COMPLETE", row["trial_id"]
        assert row["epochs_run"] == max_epochs
        epochs = {r["training_iteration"]: r["val_acc"] for r in read_results(Path(row["path"]))}
        assert trial.intermediate_values == epochs, row["trial_id"]
        assert trial.value == pytest.approx(row["score"])


@pytest.mark.slow
def test_the_example_notebook_runs_in_a_kernel(tmp_path: Path, data_dir: Path) -> None:
    storage, name, marker = tmp_path / "exp", "nb", uuid.uuid4().hex
    kernel = Kernel(tmp_path, marker, _env(data_dir, storage, name))
    try:
        with kernel.running():
            kernel.run_all()
            handler = kernel.code("import signal; print(signal.getsignal(signal.SIGINT))")
    finally:
        end_leftovers(marker)
        nbformat.write(kernel.nb, tmp_path / "executed.ipynb")  # to read when this fails
    cells = kernel.nb.cells
    searched = _text(cells[SEARCH_CELL])
    # A line per ended trial; not Ray's table every 30 s, nor Ray's own lines.
    ended = [line for line in searched.splitlines() if f"/{TINY['num_samples']}] trial " in line]
    assert len(ended) == TINY["num_samples"], searched
    assert "ipywidgets" not in searched and "RuntimeWarning" not in searched, searched
    assert "== Status ==" not in searched and "Trial name" not in searched, searched
    assert "Checkpoint successfully created" not in searched, searched
    assert "winner: trial" in searched and "test with flip TTA" in searched, searched
    # The leaderboard, as a table; the report's plots, as images.
    board = cells[SEARCH_CELL + 2]["outputs"][0]["data"]
    assert "text/html" in board and "trial_id" in board["text/plain"]
    images = [o for o in cells[SEARCH_CELL + 4]["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    # The comparison with the best seed network (baseline seeds), with and without TTA.
    compared = _text(cells[SEARCH_CELL + 6])
    assert "against" in compared and "flip TTA:" in compared and "no TTA:" in compared, compared
    # Predictions on the test images (separable colours: a trained network gets them right).
    predicted = _text(cells[SEARCH_CELL + 8])
    rows = [line.split() for line in predicted.splitlines() if line.startswith("predicted")]
    assert len(rows) == 8
    assert sum(r[1] == r[3] for r in rows) >= 6, predicted
    assert "first.png -> " in predicted
    assert _text(cells[SEARCH_CELL + 10]).startswith("True")
    # Nothing of the search is left installed in the kernel.
    assert "SearchStopped" not in handler and "StopSignals" not in handler, handler
    exp = storage / name
    for artifact in ("trials.parquet", "best_config.json", "report.md", "final/metrics.json"):
        assert (exp / artifact).exists(), artifact


@pytest.mark.slow
def test_the_stop_button_stops_the_search_and_running_the_cell_again_resumes_it(
    tmp_path: Path, data_dir: Path
) -> None:
    storage, name, marker = tmp_path / "exp", "stopped", uuid.uuid4().hex
    exp = storage / name
    kernel = Kernel(tmp_path, marker, _env(data_dir, storage, name, baseline="none"))
    try:
        with kernel.running():
            kernel.run(1)
            before = kernel.code("import signal; print(signal.getsignal(signal.SIGINT))")
            # The stop button: the kernel manager interrupts the kernel (SIGINT to it).
            watcher = _when(lambda: _epochs_reported(exp) >= 2, kernel.client.km.interrupt_kernel)
            with pytest.raises(CellExecutionError) as stopped:
                kernel.run(SEARCH_CELL)
            watcher.join()
            message = str(stopped.value)
            assert "SearchStopped" in message and "stopped by SIGINT" in message, message
            assert "resume with: search(" in message and f"name='{name}'" in message, message
            for artifact in ("trials.parquet", "best_config.json", "report.md"):
                assert not (exp / artifact).exists(), artifact
            after = kernel.code("import signal; print(signal.getsignal(signal.SIGINT))")
            assert after == before
            # The kernel lives on; the same cell again continues the experiment.
            kernel.run(SEARCH_CELL)
            resumed = _text(kernel.nb.cells[SEARCH_CELL])
            assert "continuing experiment" in resumed and "winner: trial" in resumed, resumed
    finally:
        end_leftovers(marker)
    _study_agrees_with_table(exp, name, TINY["max_epochs"])


@pytest.mark.slow
def test_a_killed_kernel_resumes_from_a_new_one_with_the_experiment_on_a_drive(
    tmp_path: Path, data_dir: Path
) -> None:
    # As README's Colab section says: the experiment on the mounted Drive, which outlives the
    # runtime (here a folder of the same shape).
    storage, name, marker = (
        tmp_path / "content/drive/MyDrive/experiments",
        "drive",
        uuid.uuid4().hex,
    )
    exp = storage / name
    env = _env(data_dir, storage, name, baseline="none")
    first = Kernel(tmp_path, marker, env)
    try:
        with first.running():
            first.run(1)
            # The search cell sent as a notebook sends it; the kernel killed mid-search, as a
            # lost runtime is (its process gone, nothing of Python runs to the end).
            first.client.kc.execute(first.nb.cells[SEARCH_CELL].source)
            deadline = time.monotonic() + SEARCH_TIMEOUT
            while _epochs_reported(exp) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _epochs_reported(exp) >= 2, "no epoch was reported in time"
            os.kill(first.pid, signal.SIGKILL)
            while first.client.km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        end_leftovers(marker)  # the dead kernel's Ray processes, before a new kernel starts
    assert not (exp / "trials.parquet").exists()

    marker = uuid.uuid4().hex
    second = Kernel(tmp_path, marker, env)
    try:
        with second.running():
            second.run(1)
            second.run(SEARCH_CELL)
    finally:
        end_leftovers(marker)
    resumed = _text(second.nb.cells[SEARCH_CELL])
    assert "resuming the search" in resumed and "winner: trial" in resumed, resumed
    _study_agrees_with_table(exp, name, TINY["max_epochs"], killed=True)
