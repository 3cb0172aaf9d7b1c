"""A real multi-node Ray cluster on this machine: a head and worker nodes as separate
processes (ray.cluster_utils.Cluster: one GCS, one raylet per node), all on 127.0.0.1.

`python -m tune.search --address ...` connects to it like to any cluster, with a storage
folder that every node shares. The nodes are stopped at the end whatever happens.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import write_python_batches
from tests.searchrun import (
    RAY_LOOPBACK_ENV,
    SEARCH_TIMEOUT,
    kill,
    read_results,
    read_table,
    start,
    tensorboard,
    trial_dirs,
)

# Each test starts Ray and runs searches: minutes on a 2-core machine.
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(monkeypatch):
    """Start nodes with `cluster.add_node(num_cpus=...)`; all are stopped afterwards."""
    for key, value in RAY_LOOPBACK_ENV.items():
        monkeypatch.setenv(key, value)  # the nodes' processes inherit this environment
    # Notice a lost node within seconds rather than the default half minute.
    monkeypatch.setenv("RAY_health_check_period_ms", "1000")
    monkeypatch.setenv("RAY_health_check_failure_threshold", "3")
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        yield nodes
    finally:
        nodes.shutdown()


def _run(cluster, args: list[str], out: Path, until=None):
    """Run a search against the cluster; `until(proc)` is polled while it runs."""
    import uuid

    marker = uuid.uuid4().hex
    proc = start(["--address", cluster.address, *args], out, marker)
    try:
        deadline = time.monotonic() + SEARCH_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if until is not None:
                until(proc)
            time.sleep(0.05)
        assert proc.poll() is not None, "the search overran its time"
    finally:
        if proc.poll() is None:
            kill(proc, marker)
    stdout, stderr = (out / "stdout.txt").read_text(), (out / "stderr.txt").read_text()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout


def test_search_on_two_nodes_uses_both_and_writes_everything(tmp_path, cluster):
    first = cluster.add_node(num_cpus=1)
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    shared = tmp_path / "shared"
    args = [
        "--space", "tiny", "--data", str(data), "--num-samples", "4", "--max-epochs", "2",
        "--subset", "300", "--retrain-seeds", "1", "--storage-path", str(shared), "--name", "mn",
    ]  # fmt: skip
    stdout = _run(cluster, args, tmp_path / "run")
    exp = shared / "mn"
    table = read_table(exp)
    assert len(table) == 4 and (table["status"] != "error").all()
    used = {node for nodes in table["nodes"] for node in nodes.split(",")}
    assert used == {first.node_id, second.node_id}, (used, stdout[-2000:])
    for name in ("best_config.json", "report.md", "final/metrics.json", "search_settings.json"):
        assert (exp / name).is_file(), name
    assert (exp / "final" / "seed_0" / "checkpoint.pt").is_file()
    for trial in trial_dirs(exp):
        scalars, _ = tensorboard(trial)
        assert scalars["val/acc"], trial


def test_losing_a_worker_node_moves_its_trials_to_the_survivor(tmp_path, cluster):
    doomed = cluster.add_node(num_cpus=1)
    survivor = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    storage = tmp_path / "shared"
    args = [
        "--space", "tiny", "--data", str(data), "--num-samples", "4", "--max-epochs", "4",
        "--grace-period", "4", "--subset", "300", "--skip-retrain",
        # A checkpoint every epoch: the moved trial must continue from the last one.
        "--checkpoint-every", "0",
        "--storage-path", str(storage), "--name", "lost",
    ]  # fmt: skip
    exp = storage / "lost"
    killed: list[str] = []

    def kill_doomed_once_a_trial_there_has_checkpointed(_proc) -> None:
        if killed:
            return
        for trial in trial_dirs(exp):
            reports = read_results(trial)
            if (
                reports
                and reports[-1].get("node_id") == doomed.node_id
                # Two epochs still to go: a trial killed after its last report would have
                # finished there and have nothing to move.
                and reports[-1].get("epoch", 0) <= 2
            ):
                cluster.remove_node(doomed, allow_graceful=False)
                killed.append(trial.name)
                return

    _run(cluster, args, tmp_path / "run", until=kill_doomed_once_a_trial_there_has_checkpointed)
    assert killed, "no trial ran on the doomed node before the search ended"
    table = read_table(exp)
    assert len(table) == 4 and (table["status"] == "completed").all(), table[["status", "error"]]
    moved = table[table["trial_id"] == killed[0].removeprefix("trial_")].iloc[0]
    assert moved["nodes"].split(",") == [doomed.node_id, survivor.node_id]
    reports = read_results(exp / killed[0])
    epochs = [r["epoch"] for r in reports]
    assert epochs == [1, 2, 3, 4], epochs  # continued from its checkpoint: no gap, no repeat
    assert any(r["iterations_since_restore"] < r["training_iteration"] for r in reports)
