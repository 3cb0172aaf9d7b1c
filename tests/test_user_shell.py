"""The entry points that start Ray, run as a user's shell runs them: no RAY_* variable at
all and a new HOME without ~/.ray (Ray's token file), as on a new machine or the lent GPU
machine. The other tests set RAY_AUTH_MODE=disabled and the loopback switch
(`searchrun.RAY_LOOPBACK_ENV`); these set nothing, or one RAY_AUTH_MODE at a time.
(The campaign's CPU rehearsal runs this way too: tests/test_campaign.py.)"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write_python_batches
from tests.searchrun import check_ok, cli, run_as_user

# Each test starts Ray and runs searches: minutes on a 2-core machine.
pytestmark = pytest.mark.slow

# Ray imported before the project starts it, as a notebook may: then Ray's Python side has
# already read RAY_AUTH_MODE and the loopback switch from the environment.
IMPORT_RAY_FIRST = """
import json, os, ray
from tune.runner import start_ray

nodes = start_ray(None, quiet=True)
square = ray.remote(lambda x: x * x)
token = os.path.expanduser("~/.ray/auth_token")
print(json.dumps({
    "nodes": [n["NodeManagerAddress"] for n in nodes],
    "gcs": ray.get_runtime_context().gcs_address,
    "square": ray.get(square.remote(7)),  # a worker connects to the GCS too
    "mode": os.environ.get("RAY_AUTH_MODE"),
    "token_mode": os.stat(token).st_mode if os.path.exists(token) else None,
}))
ray.shutdown()
"""


@pytest.mark.parametrize("mode", [None, "token", "disabled"])
def test_start_ray_after_ray_was_imported_in_every_auth_mode(tmp_path: Path, mode: str | None):
    """Unset (what every user has), token or disabled, with a new HOME: the embedded Ray
    starts, a worker runs a task, every node is on the loopback address, and token mode
    (the default) writes a token readable by its owner alone."""
    extra = {"RAY_AUTH_MODE": mode} if mode else {}
    run = run_as_user(["-c", IMPORT_RAY_FIRST], tmp_path / "run", tmp_path / "home", 180, extra)
    check_ok(run)
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["square"] == 49
    assert seen["nodes"] == ["127.0.0.1"] and seen["gcs"].startswith("127.0.0.1:"), seen
    if mode == "disabled":
        assert seen["mode"] == "disabled" and seen["token_mode"] is None
    else:
        assert seen["mode"] == "token"
        assert stat.S_IMODE(seen["token_mode"]) == 0o600


def test_a_search_runs_in_a_users_shell(tmp_path: Path):
    """`python -m tune.search` end to end (a tiny space and data, its retrain and report)
    with no RAY_* variable and a new HOME: Ray's token authentication on, made by Ray. No
    --subset: the reduced run's default (5,000) on fewer images takes them all."""
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    args = ["-m", "tune.search"] + cli(
        space="tiny", data=data, num_samples=2, max_epochs=2,
        storage_path=tmp_path / "exp", name="user", retrain_seeds=1,
    )  # fmt: skip
    run = run_as_user(args, tmp_path / "run", tmp_path / "home", 300)
    check_ok(run)
    assert "300 train / 100 val images" in run.stdout + run.stderr
    exp = tmp_path / "exp" / "user"
    table = pd.read_parquet(exp / "trials.parquet")
    assert len(table[table["role"] == "search"]) == 2
    assert (exp / "final" / "metrics.json").is_file() and (exp / "report.md").is_file()
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
