"""The README's cluster path through Ray's Jobs API, for real.

A head node and two worker nodes started with `ray start` as a cluster's nodes are, token
authentication on, the dashboard (and its Jobs API) on loopback, the project installed into
the nodes' Python as a built wheel (not the checkout: the nodes run from another folder), and
a small search submitted with `ray job submit` as README "Run on a cluster" tells a user to.
Needs ray[default] (the `cluster` extra, part of `dev`).

No `--working-dir`: nodes simulated on one machine share one session folder, where one node
releasing a working-dir package can delete it under the driver; the image installs the
project instead, and so does this test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tomllib
from ray._common.utils import get_ray_address_file

from tests.conftest import write_python_batches
from tests.searchrun import MARKER_VAR, ROOT, end_leftovers, read_table

# Each test starts Ray and runs searches: minutes on a 2-core machine.
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the test environment's python, ray and pip
JOB_TIMEOUT = 420  # seconds; the job itself takes about a minute on 2 CPU cores


LAUNCHER_CONFIG = {
    "cluster_name": "simulated",
    "max_workers": 3,
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0, "node_config": {}},
        "cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3, "node_config": {}},
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every fixed port a node would otherwise take by default: nodes on one machine must
    not share them."""
    return [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


def _ray(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120):
    return subprocess.run(
        [str(BIN / "ray"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cluster(tmp_path):
    """A 3-node Ray cluster with token authentication, running the installed project.
    Yields (dashboard URL, the cluster's environment, the folder the nodes run in)."""
    # As the image: what docker/Dockerfile copies, built and installed, no link to the checkout.
    source, site = tmp_path / "source", tmp_path / "site"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("models", "training", "search_spaces", "tune"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    home = tmp_path / "home"  # no ~/.ray/auth_token of the machine's user is used
    home.mkdir()
    # What the cluster launcher leaves on a head: its autoscaling config, here declaring up
    # to 3 one-CPU workers (2 are up), which the search reads to size its pending trials.
    (home / "ray_bootstrap_config.yaml").write_text(json.dumps(LAUNCHER_CONFIG))
    marker = uuid.uuid4().hex
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(site),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        MARKER_VAR: marker,
    }
    nodes = tmp_path / "nodes"  # the nodes' working folder: not the checkout
    nodes.mkdir()
    gcs, dashboard = _free_port(), _free_port()
    try:
        head = _ray(
            ["start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=0",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", *_node_ports()],
            env, nodes,
        )  # fmt: skip
        assert head.returncode == 0, head.stdout[-3000:] + head.stderr[-3000:]
        for _ in range(2):
            worker = _ray(
                ["start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
                 "--num-cpus=1", *_node_ports()],
                env, nodes,
            )  # fmt: skip
            assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        yield f"http://127.0.0.1:{dashboard}", env, nodes
    finally:
        end_leftovers(marker, grace=0)
        # `ray start --head` left its address for ray.init() on this machine; `ray stop`
        # would remove it, but also stop every other Ray here.
        address_file = Path(get_ray_address_file(None))
        if address_file.is_file() and address_file.read_text().strip().endswith(f":{gcs}"):
            address_file.unlink()


def _listening_addresses(port: int) -> list[str]:
    """The local addresses (as /proc/net writes them) of the sockets listening on `port`."""
    found = []
    for family in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{family}").read_text().splitlines()[1:]:
            local_address, state = line.split()[1], line.split()[3]
            address, _, hex_port = local_address.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def test_a_search_submitted_through_the_jobs_api_runs_on_the_cluster(tmp_path, cluster):
    address, env, nodes = cluster
    # The Jobs API listens on 127.0.0.1 only: no wildcard, no IPv6 "any".
    assert _listening_addresses(int(address.rsplit(":", 1)[1])) == ["0100007F"]
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    storage = tmp_path / "shared"

    # A client without the token is refused.
    anonymous = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    refused = _ray(["job", "list", "--address", address], anonymous, nodes)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()

    submitted = _ray(
        ["job", "submit", "--address", address, "--submission-id", "search-1", "--",
         "python", "-m", "tune.search", "--space", "tiny", "--data", str(data),
         "--address", "auto", "--storage-path", str(storage), "--name", "jobs",
         "--num-samples", "3", "--max-epochs", "2", "--subset", "300", "--retrain-seeds", "1"],
        env, nodes, timeout=JOB_TIMEOUT,
    )  # fmt: skip
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, logs[-5000:]
    status = _ray(["job", "status", "--address", address, "search-1"], env, nodes)
    assert "job 'search-1' succeeded" in status.stdout.lower(), status.stdout + status.stderr

    # The job's driver ran the installed wheel (no git checkout beside it), not this tree.
    exp = storage / "jobs"
    metrics = json.loads((exp / "final" / "metrics.json").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert metrics["code_version"] == version  # a checkout would add "+g<commit>"
    # As many trials at once as the declared cluster runs, though only 2 nodes are up: the
    # third waits as demand for the autoscaler; the trials ran on both live workers.
    assert "at most 3 trial(s) at once (the cluster's declared maximum nodes; 2 fit" in logs
    table = read_table(exp)
    assert len(table) == 3 and (table["status"] == "completed").all(), table
    assert len({node for nodes_ in table["nodes"] for node in nodes_.split(",")}) == 2
    for name in ("best_config.json", "report.md", "trials.parquet", "study.db"):
        assert (exp / name).is_file(), name
    assert (exp / "final" / "seed_0" / "checkpoint.pt").is_file()
