"""The GPU campaign: its plan over the machines it may meet, its deadline, what it leaves to
come back, and its CPU rehearsal end to end in a user's shell (what CI runs of it)."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import campaign, preflight
from tune.rungs import (
    DEFAULT_REDUCTION_FACTOR,
    asha_brackets,
    asha_milestones,
    default_grace_period,
)

from .conftest import write_python_batches
from .searchrun import ROOT, run_as_user

NO_PACKING = ((1, 1.0), (2, 1.0), (4, 1.0))
GOOD_PACKING = ((1, 1.0), (2, 1.5), (4, 2.2))


def measured(
    epoch: float,
    slowdown: float,
    start: float,
    left: float = 330,
    packing: tuple[tuple[int, float], ...] = GOOD_PACKING,
    k: int = 4,
) -> campaign.Measured:
    """A lease's measurements: the preset's epoch, the seed recipes (the slowest at
    `slowdown` times the preset's, the others less), a median sample at half the preset's."""
    return campaign.Measured(
        left_s=left, startup_s=start, worker_start_s=10, epoch_s=epoch,
        seed_epoch_s=tuple(epoch * slowdown * f for f in (1.0, 0.8, 0.7, 0.6, 0.5)),
        sample_epoch_s=epoch * 0.5 * 0.9, packing=packing, trials_at_once=k, seed_slots=5,
        retrain_slots=k,
    )  # fmt: skip


def option(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def rung_with_branch(e: int) -> bool:
    """Whether a search of E epochs meets a rung with a decay branch (tune.rungs, and the
    branch's rule in training.loop._branch_due)."""
    grace, rf = default_grace_period(e), DEFAULT_REDUCTION_FACTOR
    rungs = asha_milestones(e, grace, rf, asha_brackets(e, grace, rf))
    return any(r < 0.8 * e for r in rungs)


@pytest.mark.parametrize(
    ("epoch", "slowdown", "start", "left", "packing"),
    list(itertools.product(
        (0.3, 0.5, 1.0, 2.0, 3.0, 5.0), (1.0, 2.0, 4.0), (20, 40, 90), (300, 420),
        (NO_PACKING, GOOD_PACKING),
    )),
)  # fmt: skip
def test_every_step_gets_its_estimated_work_and_the_commands_are_the_plan(
    epoch, slowdown, start, left, packing
):
    """Over preset epochs of 0.3-5 s, seed recipes 1-4x slower, command starts of 20-90 s
    and 300-420 s left: each step's limit covers its estimated work, the limits fit in the
    time left, and E, the trials, the finalists, the time budget and the comparison (both
    sides at E, retrained with the same 2 seeds) are what the commands run. Only where two
    90 s command starts leave 300 s can the least of everything not fit: the seeds step
    then keeps its limit and the plan says by how much the search is short."""
    k = 4 if packing is GOOD_PACKING else 1
    m = measured(epoch, slowdown, start, left, packing, k)
    plan = campaign.plan_search(m, campaign.LEASE)
    assert sum(s.limit_s for s in plan.steps) <= left + 1e-6
    assert plan.step("seeds").limit_s >= plan.step("seeds").work_s
    if not plan.fits:
        assert (start, left) == (90, 300) and epoch >= 2.0, plan.lines
        assert "DOES NOT FIT" in plan.lines[1] and plan.lines[-1].startswith("short by")
        return
    for step in plan.steps:
        assert step.limit_s >= step.work_s, (step, plan.lines)
    assert campaign.LEASE.min_epochs <= plan.epochs <= campaign.LEASE.max_epochs
    assert plan.rung == rung_with_branch(plan.epochs)
    assert ("NO RUNG" in plan.lines[1]) == (not plan.rung)
    assert plan.lines[1].startswith(f"E = {plan.epochs}:")
    search_step = plan.step("search")
    assert plan.search_seconds == pytest.approx(
        next(v for key, v in search_step.work.items() if key.startswith("--time-budget")), abs=1
    )
    assert any(f"limit {search_step.limit_s:.0f} s" in line for line in plan.lines)

    (_, seeds), (_, search) = campaign.search_commands(plan, "/d", Path("/s"), campaign.LEASE)
    for cmd in (seeds, search):
        assert option(cmd, "--max-epochs") == str(plan.epochs)
        assert option(cmd, "--retrain-seeds") == "2" and "--skip-retrain" not in cmd
        assert option(cmd, "--subset") == (str(plan.subset) if plan.subset else None)
        assert option(cmd, "--storage-path") == "/s" and option(cmd, "--data") == "/d"
    assert option(seeds, "--gpus-per-trial") == "0.2" and option(seeds, "--finalists") == "0"
    assert option(search, "--num-samples") == str(plan.trials)
    assert option(search, "--time-budget") == f"{plan.search_seconds}s"
    assert option(search, "--finalists") == str(plan.finalists) and plan.finalists <= k
    assert float(option(search, "--gpus-per-trial")) == 1 / k


def test_the_lease_plans_a_rung_at_one_second_and_both_retrains_at_three():
    """The done-criterion's cases (docs/benchmarks.md prints them): at the preset's 1.0 s
    target the search meets a rung with a decay branch on all the images; at 3.0 s (a GPU
    three times slower, compute-bound: seeds 2x, little packing gain) both sides still get
    their retrains' time."""
    fast = campaign.plan_search(measured(1.0, 3.0, 40), campaign.LEASE)
    assert fast.fits and fast.rung and fast.epochs >= 3 and fast.subset is None
    slow_packing = ((1, 1.0), (2, 1.2), (4, 1.3))
    slow = campaign.plan_search(measured(3.0, 2.0, 30, packing=slow_packing, k=2), campaign.LEASE)
    assert slow.fits and slow.subset is None
    for plan in (fast, slow):
        for step in plan.steps:
            retrain = next(v for key, v in step.work.items() if key.startswith("retrain"))
            assert retrain > 0 and step.limit_s >= step.work_s


def test_less_time_lowers_e_then_the_data_then_the_trials_never_the_comparison():
    """As the time left shrinks, E falls (to no rung, which the plan says), then both sides
    train on a subset, then the search is one trial: both steps stay, at the same E and data,
    retrained with the same seeds, and each fits."""
    plans = [campaign.plan_search(measured(1.0, 3.0, 40, left=s), campaign.LEASE)
             for s in (600, 400, 300, 230, 200, 190)]  # fmt: skip
    epochs = [p.epochs for p in plans]
    assert epochs == sorted(epochs, reverse=True) and epochs[0] > epochs[-1] == 2
    assert [p.rung for p in plans] == [True, True, True, False, False, False]
    assert [p.subset is None for p in plans] == [True, True, True, True, False, False]
    assert [p.least_trials for p in plans][-1] == 1 and plans[-1].finalists == 0
    for plan in plans:
        assert plan.fits and all(s.limit_s >= s.work_s for s in plan.steps)
        (_, seeds), (_, search) = campaign.search_commands(plan, "/d", Path("/s"), campaign.LEASE)
        for cmd in (seeds, search):
            assert option(cmd, "--retrain-seeds") == "2"
            assert option(cmd, "--subset") == (str(plan.subset) if plan.subset else None)


def test_the_search_gets_the_time_the_seeds_step_left():
    """At its start the search's --time-budget is what is left less its retrain's and
    report's room: more than planned after a short seeds step, less after a long one."""
    m = measured(1.0, 3.0, 40)
    plan = campaign.plan_search(m, campaign.LEASE)
    search_left = m.left_s - plan.step("seeds").limit_s
    same, trials, _ = campaign.replan_search(
        plan, campaign.replace(m, left_s=search_left), campaign.LEASE
    )
    assert same == plan.search_seconds and trials == plan.trials
    more, trials, lines = campaign.replan_search(
        plan, campaign.replace(m, left_s=search_left + 60), campaign.LEASE
    )
    assert more == pytest.approx(plan.search_seconds + 60, abs=1) and trials >= plan.trials
    assert f"--time-budget {more} s (planned {plan.search_seconds} s)" in lines[0]
    less, trials, _ = campaign.replan_search(
        plan, campaign.replace(m, left_s=search_left - 30), campaign.LEASE
    )
    assert less == pytest.approx(plan.search_seconds - 30, abs=1) and trials <= plan.trials


def _campaign(tmp_path: Path, deadline: float) -> campaign.Campaign:
    args = campaign.build_parser().parse_args(
        ["--data", "x", "--out", str(tmp_path / "out"), "--deadline", str(deadline),
         "--reserve", "1"]
    )  # fmt: skip
    args.argv, args.work = [], tmp_path / "work"
    c = campaign.Campaign(args)
    c.out.mkdir()
    c.work.mkdir()
    return c


def test_a_step_past_its_share_of_the_deadline_is_cut_and_later_ones_skipped(tmp_path):
    c = _campaign(tmp_path, 6)
    started = time.monotonic()
    step = c.run("sleepy", [sys.executable, "-c", "import time; time.sleep(60)"], 60, 1)
    assert step["status"] == "cut" and "cut after" in step["reason"]
    assert time.monotonic() - started < 5 + campaign.KILL_GRACE_S + 2
    later = c.run("later", [sys.executable, "-c", "pass"], 60, 10)
    assert later["status"] == "skipped" and "left before the deadline" in later["reason"]
    saved = json.loads((c.out / "results.json").read_text())
    assert [s["status"] for s in saved["steps"]] == ["cut", "skipped"]
    assert "| sleepy | cut" in (c.out / "results.md").read_text()


def test_a_step_that_ignores_sigint_is_killed_within_the_grace(tmp_path):
    c = _campaign(tmp_path, 4)
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    started = time.monotonic()
    step = c.run("stubborn", [sys.executable, "-c", code], 60, 1)
    assert step["status"] == "cut" and step["exit"] == -signal.SIGKILL
    assert time.monotonic() - started < 3 + campaign.KILL_GRACE_S + campaign.KILL_WAIT_S + 3


def test_the_wait_after_a_kill_has_a_limit(monkeypatch):
    """A step whose process outlives SIGKILL (stuck in the kernel; here: the signals are not
    sent) is left behind after KILL_WAIT_S, not waited for past the deadline."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(campaign.os, "killpg", lambda pid, sig: None)
    outcome: list = []
    waiter = threading.Thread(target=lambda: outcome.append(campaign._end_group(proc)))
    try:
        waiter.start()
        waiter.join(timeout=campaign.KILL_GRACE_S + campaign.KILL_WAIT_S + 10)
        assert not waiter.is_alive() and outcome == [None]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        waiter.join()


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


def test_the_compile_check_names_the_compiler_when_torch_compile_fails(monkeypatch):
    import torch

    def no_compiler(model):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    out = preflight.check_compile("cpu")
    assert "torch.compile of a small network failed on cpu" in out["failed"]
    assert "C compiler" in out["failed"] and "CXX=/nonexistent/c++" in out["failed"]


@pytest.mark.slow
def test_the_compile_check_compiles_a_small_network_on_this_machine():
    """Part 2's preflight, for real on a CPU (inductor's C++ path), in seconds."""
    out = preflight.check_compile("cpu")
    assert "failed" not in out, out
    assert 0 < out["compile_seconds"] < 300 and out["c_compiler"]


def test_what_if_prints_the_plan_and_the_commands(capsys):
    assert campaign.main(["--what-if", "--epoch", "1.0", "--seed-slowdown", "3"]) == 0
    text = capsys.readouterr().out
    assert "plan: E = " in text and "step seeds: estimated" in text
    assert "search: python -m tune.search --space efficient_resnet" in text


@pytest.mark.slow
def test_the_rehearsal_in_a_users_shell_returns_the_comparison(tmp_path):
    """The campaign's CPU rehearsal end to end, as a user's shell runs it (no RAY_*
    variable, a new HOME): preflight, benchmarks, the plan, the seed baselines with their
    retrain, then the search with its finalists, retrain and report, every step ok within
    its limit, and the winner against the best seed network, with the interval and the
    sentence, in what comes back."""
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    out, deadline = tmp_path / "out", 540
    cmd = ["-m", "benchmarks.campaign", "--rehearse", "--data", str(data), "--out", str(out)]
    cmd += ["--work", str(tmp_path / "work"), "--deadline", str(deadline)]
    run = run_as_user(cmd, tmp_path / "run", tmp_path / "home", deadline + 60)
    results = json.loads((out / "results.json").read_text())
    assert run.returncode == 0, (
        (out / "campaign.log").read_text()[-6000:],
        json.dumps(results["figures"].get("search"), default=str),
        run.stderr[-2000:],
    )
    assert results["done"] and results["elapsed_s"] < deadline
    steps = {s["name"]: s for s in results["steps"]}
    assert list(steps) == ["preflight", "bench_models", "bench_packing", "seeds", "search"]
    assert all(s["status"] == "ok" and s["seconds"] <= s["limit_s"] for s in steps.values())
    assert results["preflight"]["train_images"] == 400
    assert results["preflight"]["ray_auth_mode"] == "token"

    # What comes back: at most 8 plain files, one level, no checkpoint.
    assert campaign.check_returnable(out) == []
    names = {p.name for p in out.iterdir()}
    assert names == {"results.json", "results.md", "campaign.log", "report.md", "trials.parquet",
                     "seeds_trials.parquet", "params_vs_acc.png", "curves.png"}  # fmt: skip

    # The commands are the plan's: E for both, the trials, the search's time budget.
    plan, start = results["plan"], results["search_start"]
    e = plan["epochs"]
    seeds_cmd, search_cmd = steps["seeds"]["command"], steps["search"]["command"]
    assert option(seeds_cmd, "--max-epochs") == option(search_cmd, "--max-epochs") == str(e)
    assert option(search_cmd, "--num-samples") == str(start["trials"])
    assert option(search_cmd, "--time-budget") == f"{start['time_budget_s']}s"
    assert start["time_budget_s"] >= plan["search_seconds"] - 5  # the seeds step kept its limit
    assert steps["seeds"]["limit_s"] == pytest.approx(plan["steps"][0]["limit_s"])
    seeds, trials = (
        pd.read_parquet(out / "seeds_trials.parquet"),
        pd.read_parquet(out / "trials.parquet"),
    )
    assert (seeds["epochs_run"] == e).all() and len(seeds) == 5
    assert trials["epochs_run"].max() == e
    search = results["figures"]["search"]
    assert 1 <= search["worker_processes"] <= plan["trials_at_once"]

    # The comparison: both sides retrained with the same 2 seeds, Welch's interval, a sentence.
    comparison = results["comparison"]
    assert (
        len(comparison["winner"]["test_acc_tta"])
        == len(comparison["best_seed"]["test_acc_tta"])
        == 2
    )
    tta = comparison["test_acc_tta"]
    assert tta["low"] <= tta["diff"] <= tta["high"] and tta["n_a"] == tta["n_b"] == 2
    report = (out / "report.md").read_text()
    assert f"best seed network (`{comparison['best_seed']['preset']}`)" in report
    assert f"| the winner (trial {comparison['winner']['trial_id']})" in report
    assert tta["sentence"] in report and "95% CI" in tta["sentence"]
    log = (out / "campaign.log").read_text()
    assert "plan (assumed, before any measurement): step seeds: estimated" in log
    assert "plan (measured): step search: estimated" in log and "done in" in log
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()


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
