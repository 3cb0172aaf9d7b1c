"""The study of a finished search, seen through optuna-dashboard's HTTP API as a user's
browser sees it (the `dashboard` extra; the dashboard serves on loopback only)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import write_python_batches
from tests.searchrun import check_ok, read_table, search

# Each test starts Ray and runs searches: minutes on a 2-core machine.
pytestmark = pytest.mark.slow

DASHBOARD = Path(sys.executable).parent / "optuna-dashboard"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.skipif(not DASHBOARD.exists(), reason="the dashboard extra is not installed")
def test_the_dashboard_shows_every_trial_of_a_finished_search(tmp_path: Path) -> None:
    data = write_python_batches(tmp_path / "data", n_train=200, n_test=50)
    storage, name, trials = tmp_path / "exp", "dash", 4
    run = search(
        ["--space", "tiny", "--data", str(data), "--num-samples", str(trials),
         "--max-epochs", "2", "--subset", "100", "--skip-retrain",
         "--storage-path", str(storage), "--name", name],
        tmp_path / "run",
    )  # fmt: skip
    check_ok(run)
    table = read_table(storage / name)
    assert (
        f"optuna-dashboard sqlite:///{storage / name}/study.db"
        in (storage / name / "report.md").read_text()
    )

    port = _free_port()
    server = subprocess.Popen(
        [str(DASHBOARD), f"sqlite:///{storage / name}/study.db", "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline:
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:  # not listening yet
                assert server.poll() is None, "the dashboard exited"
                time.sleep(0.3)
        assert studies is not None, "the dashboard did not answer within 60 s"
        assert [s["study_name"] for s in studies] == [name]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        seen = {t["number"]: t for t in detail["trials"]}
        assert sorted(seen) == sorted(table["config/trial_number"])
        for row in table.to_dict("records"):
            trial = seen[row["config/trial_number"]]
            assert trial["state"].upper() == row["optuna_state"]
            assert len(trial["intermediate_values"]) == row["epochs_run"]
    finally:
        server.terminate()
        server.wait(timeout=30)
