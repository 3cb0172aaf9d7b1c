"""--precision through the search: every trial, finalist and retrain trains at it, and what
each really used is in trials.parquet, metrics.json and report.md; a GPU the installed torch
cannot run stops the search before Ray starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import campaign
from tests.conftest import write_python_batches
from tests.searchrun import ROOT, check_ok, cli, read_table, search
from training import precision
from tune.cli import PRECISION_NAMES


def test_the_cli_names_every_precision_training_knows() -> None:
    assert PRECISION_NAMES == precision.PRECISIONS


def test_an_unknown_precision_is_refused_before_torch_is_imported() -> None:
    # -X importtime lists every module imported; torch must not be among them.
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tune.search", "--precision", "fp8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "--precision" in run.stderr and "'fp8'" in run.stderr and "bf16" in run.stderr
    assert " torch\n" not in run.stderr and "| torch\n" not in run.stderr


def test_an_unsupported_gpu_stops_the_search_before_ray_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tune import runner, search

    message = "GPU 0 (Tesla P100-PCIE-16GB, compute capability 6.0) cannot run this torch"

    def unsupported() -> int:
        raise precision.UnsupportedGpuError(message)

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(precision, "check_visible_gpus", unsupported)
    monkeypatch.setattr(runner, "start_ray", no_ray)
    code = search.main(["--space", "tiny", "--storage-path", str(tmp_path / "exp")])
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "exp").exists()


def test_visible_gpus_are_each_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = []
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(precision, "check_gpu_supported", checked.append)
    assert precision.check_visible_gpus() == 2
    assert [str(d) for d in checked] == ["cuda:0", "cuda:1"]


def test_the_campaign_passes_its_precision_to_both_searches() -> None:
    plan = campaign.plan_search(
        campaign.Measured(
            left_s=600,
            startup_s=40,
            worker_start_s=10,
            epoch_s=1.0,
            seed_epoch_s=(3.0,) * 5,
            sample_epoch_s=0.4,
            packing=((1, 1.0), (2, 1.5)),
            trials_at_once=2,
            seed_slots=5,
            retrain_slots=2,
        ),
        campaign.LEASE,
    )
    cmds = campaign.search_commands(plan, "/d", Path("/s"), campaign.LEASE, precision="fp16")
    for _, cmd in cmds:
        assert cmd[cmd.index("--precision") + 1] == "fp16"
    args = campaign.build_parser().parse_args(["--precision", "fp32"])
    assert args.precision == "fp32"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_python_batches(tmp_path_factory.mktemp("cifar"), n_train=300, n_test=60)


# bf16 on this CPU: what `auto` picks where AMX-BF16 is (docs/benchmarks.md); elsewhere it is
# still run as asked (slower), which is what this checks.
@pytest.mark.slow
@pytest.mark.parametrize("wanted", ["fp32", "bf16"])
def test_a_search_trains_and_records_the_precision_asked(
    tmp_path: Path, data_dir: Path, wanted: str
) -> None:
    storage, name = tmp_path / "exp", "prec"
    run = search(
        cli(
            space="tiny",
            data=data_dir,
            num_samples=2,
            max_epochs=2,
            grace_period=1,
            subset=200,
            retrain_seeds=1,
            finalists=1,
            finalist_seeds=1,
            precision=wanted,
            storage_path=storage,
            name=name,
        ),
        tmp_path / "run",
    )
    check_ok(run)
    exp = storage / name
    settings = json.loads((exp / "search_settings.json").read_text())
    assert settings["precision"] == wanted
    table = read_table(exp, every_role=True)
    assert set(table["role"]) == {"search", "finalist"}
    assert (table["precision"] == wanted).all(), table[["trial_id", "role", "precision"]]
    metrics = json.loads((exp / "final" / "metrics.json").read_text())
    assert metrics["precision"] == wanted
    assert metrics["train_config"]["precision"] == wanted
    report = (exp / "report.md").read_text()
    assert f"`--precision {wanted}`; the trials trained at {wanted} (2 trials)" in report
    assert f"the retrain at {wanted}." in report
    # The duration: printed from the first epochs, and in the report beside what it took.
    assert "estimated duration of the whole command" in run.stdout + run.stderr
    duration = json.loads((exp / "estimate.json").read_text())
    assert duration["estimated_s"] > 0 and 0 < duration["actual_s"] <= run.seconds
    assert "## Duration" in report and f"it took {duration['actual_s'] / 60:.1f} min" in report
