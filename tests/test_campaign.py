"""The GPU campaign: its plan, its deadline, what it leaves to come back, and its CPU mode
end to end (what CI runs of it)."""

import json
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

from benchmarks import campaign

from .conftest import write_python_batches
from .searchrun import ROOT, end_leftovers, search_env


def test_the_plan_gives_the_search_at_least_half_and_one_epoch_count_to_both():
    plan = campaign.plan_search(
        400, epoch_s=1.0, trial_epoch_s=0.5, gpus_per_trial=0.25, seed_gain=2.0,
        sizes=campaign.LEASE,
    )  # fmt: skip
    fixed = 3 * campaign.LEASE.startup_s + 15
    # Baselines 5E/2 s, two retrains (best seed network, winner) of 2 seeds: 4E s.
    # 400 - 135 - 5E/2 - 4E >= 200 holds up to E = 10.
    assert plan.epochs == 10 and plan.search_seconds == 400 - fixed - 25 - 40
    per_trial = 0.5 * 5  # about E/2 epochs
    assert plan.trials == min(campaign.LEASE.max_trials, int(plan.search_seconds * 4 / per_trial))
    assert any("E = 10" in line for line in plan.lines)
    tight = campaign.plan_search(
        150, epoch_s=5.0, trial_epoch_s=3.0, gpus_per_trial=1.0, seed_gain=1.0,
        sizes=campaign.LEASE,
    )  # fmt: skip
    assert tight.epochs == campaign.LEASE.min_epochs and tight.trials >= 1

    seeds, search = campaign.search_commands(plan, "/data", Path("/s"), campaign.LEASE)
    for name, cmd in (seeds, search):
        assert cmd[cmd.index("--max-epochs") + 1] == "10"
        # Retrained alike, or the search's report would not compare them.
        assert cmd[cmd.index("--retrain-seeds") + 1] == "2" and "--skip-retrain" not in cmd
        assert cmd[cmd.index("--storage-path") + 1] == "/s"
        assert cmd[cmd.index("--name") + 1] == name
    assert search[1][search[1].index("--gpus-per-trial") + 1] == "0.25"
    assert f"{plan.search_seconds}s" in search[1]


def test_a_step_past_its_share_of_the_deadline_is_cut_and_later_ones_skipped(tmp_path):
    args = campaign.build_parser().parse_args(
        ["--data", "x", "--out", str(tmp_path / "out"), "--deadline", "6", "--reserve", "1"]
    )
    args.argv, args.work = [], tmp_path / "work"
    c = campaign.Campaign(args)
    c.out.mkdir()
    c.work.mkdir()
    started = time.monotonic()
    step = c.run("sleepy", [sys.executable, "-c", "import time; time.sleep(60)"], 60, 1)
    assert step["status"] == "cut" and "cut after" in step["reason"]
    assert time.monotonic() - started < 5 + campaign.KILL_GRACE_S + 2
    later = c.run("later", [sys.executable, "-c", "pass"], 60, 10)
    assert later["status"] == "skipped" and "left before the deadline" in later["reason"]
    saved = json.loads((c.out / "results.json").read_text())
    assert [s["status"] for s in saved["steps"]] == ["cut", "skipped"]
    assert "| sleepy | cut" in (c.out / "results.md").read_text()


def test_check_returnable_applies_the_lease_limits(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    assert campaign.check_returnable(tmp_path) == []
    (tmp_path / "a" / "b" / "ok.txt").write_text("x")
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    for i in range(7):
        (tmp_path / f"f{i}.txt").write_text("x")
    problems = " ".join(campaign.check_returnable(tmp_path))
    assert "deep.txt: deeper" in problems and "bad name.txt" in problems
    assert "10 files > 8" in problems


def test_the_cpu_mode_runs_every_step_within_its_deadline_into_a_folder_that_comes_back(
    tmp_path,
):
    """The campaign's --smoke end to end: preflight, benchmark, plan, the seed baselines and a
    search at the same E whose trials reuse their worker, results written as they come."""
    import subprocess

    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    out, deadline = tmp_path / "out", 600
    marker = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "benchmarks.campaign", "--smoke", "--data", str(data)]
    cmd += ["--out", str(out), "--work", str(tmp_path / "work"), "--deadline", str(deadline)]
    started = time.monotonic()
    try:
        run = subprocess.run(
            cmd, cwd=ROOT, env=search_env(marker), capture_output=True, text=True,
            timeout=deadline + 60,
        )  # fmt: skip
    finally:
        end_leftovers(marker)
    assert time.monotonic() - started < deadline + 5
    results = json.loads((out / "results.json").read_text())
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    assert results["done"] and results["elapsed_s"] < deadline
    steps = {s["name"]: s for s in results["steps"]}
    assert list(steps) == ["preflight", "bench_models", "bench_packing", "seeds", "search"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert results["preflight"]["train_images"] == 400

    # What comes back: at most 8 plain files, one level, no checkpoint; the plan's E in both.
    assert campaign.check_returnable(out) == []
    names = {p.name for p in out.iterdir()}
    assert names == {"results.json", "results.md", "campaign.log", "report.md", "trials.parquet",
                     "seeds_trials.parquet", "params_vs_acc.png", "curves.png"}  # fmt: skip
    e = results["plan"]["epochs"]
    for name in ("seeds", "search"):
        cmd = steps[name]["command"]
        assert cmd[cmd.index("--max-epochs") + 1] == str(e)
    seeds, trials = (
        pd.read_parquet(out / "seeds_trials.parquet"),
        pd.read_parquet(out / "trials.parquet"),
    )
    assert (seeds["epochs_run"] == e).all() and len(seeds) == 5
    assert trials["epochs_run"].max() == e

    # The search's trials ran one at a time in one reused worker process.
    search = results["figures"]["search"]
    assert search["trials"] == len(trials) >= 2 and search["worker_processes"] == 1
    assert trials["started_at"].notna().all() and (trials["ended_at"] > trials["started_at"]).all()
    assert search["retrain"]["test_acc_mean"] >= 0
    assert "seed" in (out / "report.md").read_text().lower()
    log = (out / "campaign.log").read_text()
    assert "plan: E = " in log and "done in" in log


def test_each_layer_imports_nothing_above_it():
    """models <- training <- search_spaces <- tune <- benchmarks: the measuring tools live
    above the library, and no module of a layer imports one of a higher layer."""
    import ast

    layers = ["models", "training", "search_spaces", "tune", "benchmarks"]
    for level, package in enumerate(layers):
        above = set(layers[level + 1 :])
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in above, f"{path}: imports {name}"
