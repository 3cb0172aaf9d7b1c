"""Every GPU measurement that fits one lease, in one command that ends before its deadline.

    python -m benchmarks.campaign --data DIR --out DIR [--deadline 540]   # part 1, on a GPU
    python -m benchmarks.campaign --data DIR --out DIR --part 2            # a later lease
    python -m benchmarks.campaign --data DIR --out DIR --smoke             # CPU mode (CI)

Part 1, in order of value: a preflight (CUDA visible, Ray sees the GPU, the data load); the
preset's epoch time (our loop, bf16, against the usual loop) and packing 1/2/4 trials of a
median-sized sample of the space; then the seed baselines and an `efficient_resnet` search
at the same epoch count E, where E, the number of trials, the trials per GPU and the
search's time are chosen from the measured epoch time (the arithmetic is printed and kept);
the search then retrains its best and writes its report beside the baselines.
Part 2 (what does not fit the first lease): the space's largest samples, the profile, the
`speedrun` recipe on the real data.

The campaign never passes `--deadline` (seconds of wall time from its start): each step's
limit is the smaller of its own and what is left minus `--reserve` for writing the results;
a step that cannot get its minimum is skipped and says so. The results go to `--out` as
they come, in at most 8 files, none deeper than OUT/a/b, no checkpoints (what comes back
from a lent GPU machine): results.json (every figure, every command exactly as it ran, each
step's status), results.md, campaign.log (each step's output tail), and the search's
report.md, trials.parquet, seeds_trials.parquet and two plots. The experiments themselves
(checkpoints included) stay in `--work`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.artifacts import code_version, write_json, write_text

PART1_FILES = ("report.md", "trials.parquet", "params_vs_acc.png", "curves.png")
MAX_FILES = 8  # what comes back from a lent GPU machine: 8 files, 16 MiB each, OUT/a/b/file
MAX_FILE_BYTES = 16 * 2**20
KILL_GRACE_S = 5.0  # after SIGINT, before SIGKILL of a step's whole process group
TRIAL_IMAGES = 45_000  # training images of a search trial (50,000 less the validation split)
RETRAIN_IMAGES = 50_000


@dataclass(frozen=True)
class Sizes:
    """What the CPU mode (--smoke) shrinks; the lease's sizes otherwise."""

    need_gpu: bool
    bench_args: tuple[str, ...]  # added to every benchmarks.bench command
    search_args: tuple[str, ...]  # added to both searches (e.g. --subset)
    min_epochs: int
    max_epochs: int
    max_trials: int
    retrain_seeds: int
    seed_gpu_share: float  # the five baselines run at once, this share of the GPU each
    preflight_s: float  # each step's own limit, in seconds
    bench_models_s: float
    bench_packing_s: float
    startup_s: float  # a search command's start (Ray, data, imports) before its first trial
    search_floor_s: float  # the least each search command's limit may be (if time is left)


LEASE = Sizes(
    need_gpu=True,
    bench_args=("--space-samples", "60", "--packing-targets", "median"),
    search_args=(),
    min_epochs=2,
    max_epochs=30,
    max_trials=200,
    retrain_seeds=2,  # the fewest that give the comparison's interval
    seed_gpu_share=0.2,
    preflight_s=90,
    bench_models_s=120,
    bench_packing_s=150,
    startup_s=40,
    search_floor_s=60,
)
SMOKE = Sizes(
    need_gpu=False,
    bench_args=(
        "--tiny",
        "--device",
        "cpu",
        "--packing-targets",
        "median",
        "--packing-counts",
        "1",
        "2",
    ),  # fmt: skip
    search_args=("--subset", "200", "--max-concurrent-trials", "1"),
    min_epochs=2,  # OneCycle needs more than one epoch's single step
    max_epochs=2,
    max_trials=3,
    retrain_seeds=1,
    seed_gpu_share=0.0,
    preflight_s=90,
    bench_models_s=120,
    bench_packing_s=150,
    startup_s=20,
    # On CPUs the seed networks (scaled down to the reduced budget) cost more than the
    # tiny benchmark predicts.
    search_floor_s=180,
)


@dataclass
class Plan:
    """The search step's choices and the arithmetic behind them."""

    epochs: int  # E: every baseline, trial and the retrain
    trials: int
    gpus_per_trial: float
    search_seconds: int  # --time-budget of the search
    seeds_seconds: float  # estimates, seconds
    retrain_seconds: float
    lines: list[str] = field(default_factory=list)


def plan_search(
    seconds_left: float,
    epoch_s: float,
    trial_epoch_s: float,
    gpus_per_trial: float,
    seed_gain: float,
    sizes: Sizes,
) -> Plan:
    """E, trials, trials per GPU and the search's time from the measured epoch times.

    `epoch_s`: the preset's epoch on 50,000 images (the baselines and the retrain are about
    that size); `trial_epoch_s`: a median sample's epoch on a trial's 45,000 images at
    `gpus_per_trial`; `seed_gain`: how much more five concurrent baselines get through than
    one. E is the largest in [min, max] that leaves the search at least half of the time."""
    k = max(1, round(1 / gpus_per_trial)) if gpus_per_trial > 0 else 1
    fixed = 3 * sizes.startup_s + 15  # three commands' starts (seeds, search, retrain) + report

    def seeds_s(e: int) -> float:
        return e * epoch_s * 5 / seed_gain

    def retrain_s(e: int) -> float:  # the best seed network's retrain and the winner's
        return 2 * e * epoch_s * sizes.retrain_seeds

    epochs = sizes.min_epochs
    for e in range(sizes.max_epochs, sizes.min_epochs - 1, -1):
        if seconds_left - fixed - seeds_s(e) - retrain_s(e) >= 0.5 * seconds_left:
            epochs = e
            break
    search_s = max(0.0, seconds_left - fixed - seeds_s(epochs) - retrain_s(epochs))
    # ASHA stops most trials early: about half of E per trial on average.
    per_trial = max(trial_epoch_s, 1e-3) * max(1.0, epochs / 2)
    trials = int(min(sizes.max_trials, max(k, search_s * k / per_trial)))
    plan = Plan(
        epochs, trials, gpus_per_trial, max(30, int(search_s)), seeds_s(epochs), retrain_s(epochs)
    )
    plan.lines = [
        f"time left for the searches: {seconds_left:.0f} s; fixed costs {fixed:.0f} s "
        f"(3 command starts of {sizes.startup_s:.0f} s + 15 s for the report)",
        f"preset epoch {epoch_s:.2f} s; baselines: 5 x E x {epoch_s:.2f} s / {seed_gain:.2f} "
        f"(packing gain) = {seeds_s(epochs):.0f} s at E={epochs}",
        f"retrains (best seed network, winner): 2 x {sizes.retrain_seeds} seed(s) x E x "
        f"{epoch_s:.2f} s = {retrain_s(epochs):.0f} s",
        f"E = {epochs}: the largest in [{sizes.min_epochs}, {sizes.max_epochs}] that leaves the "
        f"search at least half: {seconds_left:.0f} - {fixed:.0f} - {seeds_s(epochs):.0f} - "
        f"{retrain_s(epochs):.0f} = {search_s:.0f} s",
        f"trials: {k} at once (--gpus-per-trial {gpus_per_trial:g}); a trial ~ E/2 epochs x "
        f"{trial_epoch_s:.2f} s = {per_trial:.1f} s; {search_s:.0f} s x {k} / {per_trial:.1f} s "
        f"-> {trials} (at most {sizes.max_trials}, at least {k})",
    ]
    return plan


def search_commands(
    plan: Plan, data: str, storage: Path, sizes: Sizes, python: str = sys.executable
) -> list[tuple[str, list[str]]]:
    """The seed baselines and the search at the same E, in one storage folder, with the same
    data, subset, seed and retrain seeds: the search's report compares its winner with the
    best seed network only when all of these match, both retrained alike."""
    common = ["--data", data, "--max-epochs", str(plan.epochs), "--storage-path", str(storage)]
    common += [*sizes.search_args, "-q"]
    seed_gpus = ["--gpus-per-trial", f"{sizes.seed_gpu_share:g}"] if sizes.need_gpu else []
    trial_gpus = ["--gpus-per-trial", f"{plan.gpus_per_trial:g}"] if sizes.need_gpu else []
    seeds = [python, "-m", "tune.search", "--space", "seeds", "--name", "seeds"]
    # No finalists among the seed networks: the best of five runs is the baseline, as
    # `--baseline seeds` picks it, and their re-runs would not fit the plan.
    seeds += [*common, *seed_gpus, "--retrain-seeds", str(sizes.retrain_seeds), "--finalists", "0"]
    search = [python, "-m", "tune.search", "--space", "efficient_resnet", "--name", "search"]
    search += [*common, *trial_gpus, "--num-samples", str(plan.trials)]
    search += ["--time-budget", f"{plan.search_seconds}s"]
    search += ["--retrain-seeds", str(sizes.retrain_seeds)]
    return [("seeds", seeds), ("search", search)]


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = SMOKE if args.smoke else LEASE
        self.out: Path = args.out
        self.work: Path = args.work
        self.started = time.monotonic()
        self.results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": "python -m benchmarks.campaign " + " ".join(args.argv),
            "code_version": code_version(),
            "part": args.part,
            "smoke": args.smoke,
            "deadline_s": args.deadline,
            "reserve_s": args.reserve,
            "sizes": asdict(self.sizes),
            "steps": [],
            "figures": {},
        }

    # --- time and records

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds a step may still use: to the deadline, less the reserve for the results."""
        return self.args.deadline - self.elapsed() - self.args.reserve

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {message}"
        print(line, flush=True)
        with open(self.out / "campaign.log", "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        self.results["elapsed_s"] = self.elapsed()
        write_json(self.out / "results.json", self.results)
        write_text(self.out / "results.md", format_results(self.results))

    def record(self, name: str, **fields: Any) -> dict[str, Any]:
        step = {"name": name, **fields}
        self.results["steps"].append(step)
        self.save()
        return step

    # --- steps

    def run(self, name: str, cmd: list[str], own_s: float, min_s: float) -> dict[str, Any]:
        """Run one step as a subprocess (its own process group) within the smaller of `own_s`
        and what is left; skipped when that is under `min_s`. A step over its limit gets
        SIGINT, then SIGKILL for its whole group, and is recorded as cut."""
        limit = min(own_s, self.left())
        if limit < min_s:
            reason = (
                f"cut: {max(0.0, self.left()):.0f} s left before the deadline, needs {min_s:.0f} s"
            )
            self.log(f"skip {name}: {reason}")
            return self.record(name, command=cmd, status="skipped", reason=reason)
        self.log(f"start {name} (limit {limit:.0f} s): {' '.join(cmd)}")
        log_path = self.work / f"{name}.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
            try:
                rc = proc.wait(timeout=limit)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                _end_group(proc)
                rc, status = proc.returncode, "cut"
        seconds = time.monotonic() - started
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        with open(self.out / "campaign.log", "a") as f:
            f.write(f"--- {name}: last lines of its output\n" + "\n".join(tail) + "\n")
        reason = ""
        if status == "cut":
            reason = f"cut after {seconds:.0f} s: its limit ({limit:.0f} s, the deadline's share)"
        elif status == "failed":
            reason = f"exit {rc}: " + (tail[-1] if tail else "")
        self.log(f"end {name}: {status} after {seconds:.0f} s {reason}")
        return self.record(
            name, command=cmd, limit_s=limit, seconds=seconds, exit=rc, status=status, reason=reason
        )

    def preflight(self) -> bool:
        path = self.work / "preflight.json"
        cmd = [sys.executable, "-m", "benchmarks.preflight", "--data", self.args.data]
        cmd += ["--out", str(path)] + (["--need-gpu"] if self.sizes.need_gpu else [])
        step = self.run("preflight", cmd, self.sizes.preflight_s, 10)
        found = json.loads(path.read_text()) if path.exists() else {}
        self.results["preflight"] = found
        if step["status"] != "ok":
            reason = found.get("failed") or step.get("reason") or step["status"]
            self.results["stopped"] = f"preflight failed: {reason}"
            self.log(f"stop: preflight failed: {reason}")
            self.save()
            return False
        return True

    def bench(self, name: str, mode: str, own_s: float, extra: tuple[str, ...] = ()) -> dict:
        path = self.work / f"{name}.json"
        cmd = [sys.executable, "-m", "benchmarks.bench", "--mode", mode, "--out", str(path)]
        cmd += [*self.sizes.bench_args, *extra]
        self.run(name, cmd, own_s, 15)
        found = json.loads(path.read_text()) if path.exists() else {}
        self.results["figures"][name] = found
        self.save()
        return found

    def part1(self) -> None:
        models = self.bench("bench_models", "models", self.sizes.bench_models_s)
        packing = self.bench("bench_packing", "packing", self.sizes.bench_packing_s)
        plan = self.plan(models, packing)
        if plan is None:
            return
        storage = self.work / "exp"
        for name, cmd in search_commands(plan, self.args.data, storage, self.sizes):
            if name == "seeds":
                own = plan.seeds_seconds * 1.5 + self.sizes.startup_s + 30
            else:
                own = plan.search_seconds + plan.retrain_seconds * 1.5 + self.sizes.startup_s + 60
            own = max(own, self.sizes.search_floor_s)
            self.run(name, cmd, own, min_s=self.sizes.startup_s + 10)
            self.collect(storage)

    def plan(self, models: dict, packing: dict) -> Plan | None:
        try:
            preset = next(iter(models["models"].values()))
            epoch_s = preset["variants"]["ours"]["epoch_seconds"]
            rows = next(v for k, v in packing["packing"].items() if k.startswith("median"))
        except (KeyError, StopIteration, TypeError):
            reason = "no epoch time or packing measurement to plan the searches from"
            self.results["stopped"] = reason
            self.log(f"stop: {reason}")
            self.save()
            return None
        from benchmarks.bench import pick_gpus_per_trial

        share = pick_gpus_per_trial(rows)
        k = round(1 / share)
        chosen = next(r for r in rows if r["concurrent"] == k)
        per_trial_rate = chosen["total_images_per_sec"] / k
        images = packing.get("packing_images", TRIAL_IMAGES)
        scale = TRIAL_IMAGES / images if not self.args.smoke else 1.0
        trial_epoch_s = images * scale / per_trial_rate
        seed_gain = max(r["total_images_per_sec"] for r in rows) / rows[0]["total_images_per_sec"]
        epoch_full = (
            epoch_s * (RETRAIN_IMAGES / models["train_images"]) if not self.args.smoke else epoch_s
        )
        plan = plan_search(
            self.left(), epoch_full, trial_epoch_s, share if self.sizes.need_gpu else 1.0,
            max(1.0, seed_gain), self.sizes,
        )  # fmt: skip
        for line in plan.lines:
            self.log("plan: " + line)
        self.results["plan"] = asdict(plan)
        self.save()
        return plan

    def collect(self, storage: Path) -> None:
        """Copy what comes back (report, tables, two plots) and the searches' own figures:
        trial gaps, worker reuse, the report overhead, the retrain's test accuracy."""
        search, seeds = storage / "search", storage / "seeds"
        for name in PART1_FILES:
            if (search / name).is_file():
                shutil.copyfile(search / name, self.out / name)
        if (seeds / "trials.parquet").is_file():
            shutil.copyfile(seeds / "trials.parquet", self.out / "seeds_trials.parquet")
        for label, exp in (("seeds", seeds), ("search", search)):
            if exp.is_dir():
                self.results["figures"][label] = experiment_figures(exp)
        self.save()

    def part2(self) -> None:
        for mode in ("space", "profile"):
            self.bench(f"bench_{mode}", mode, self.left())
        cmd = [sys.executable, "-m", "training.train", "--model", "efficient_resnet"]
        cmd += ["--recipe", "speedrun", "--data", self.args.data, "--out"]
        cmd += [
            str(self.work / "speedrun"),
            *(["--subset", "200", "--epochs", "1"] if self.args.smoke else []),
        ]
        self.run("speedrun", cmd, self.left(), 30)
        metrics = self.work / "speedrun" / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            self.results["figures"]["speedrun"] = {
                k: m.get(k) for k in ("test_acc", "val_acc", "seconds", "epochs", "params")
            } | {"history": [{k: h.get(k) for k in ("epoch", "val_acc", "train_seconds")}
                             for h in m.get("history", [])]}  # fmt: skip
            self.save()

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log(f"campaign part {self.args.part}, deadline {self.args.deadline:.0f} s")
        self.save()
        if self.preflight():
            self.part1() if self.args.part == 1 else self.part2()
        self.results["done"] = True
        self.log(f"done in {self.elapsed():.0f} s (deadline {self.args.deadline:.0f} s)")
        self.save()
        problems = check_returnable(self.out)
        if problems:
            self.log("the output folder would not come back whole: " + "; ".join(problems))
        failed = [s["name"] for s in self.results["steps"] if s["status"] != "ok"]
        return 1 if "stopped" in self.results or failed or problems else 0


ROOT = Path(__file__).resolve().parents[1]


def _end_group(proc: subprocess.Popen) -> None:
    """SIGINT to the step's process group (a search then stops and writes what it has), and
    SIGKILL to whatever of the group is still there after KILL_GRACE_S."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def experiment_figures(exp: Path) -> dict[str, Any]:
    """From a search's folder: trials by status, the best validation accuracy, the gap
    between trials (started_at / ended_at), how many worker processes ran the trials, the
    report + checkpoint share of training time, and the retrain's test accuracy."""
    out: dict[str, Any] = {}
    table_path = exp / "trials.parquet"
    if table_path.is_file():
        import pandas as pd

        table = pd.read_parquet(table_path)
        out["trials"] = len(table)
        out["status"] = table["status"].value_counts().to_dict()
        out["best_val_acc"] = float(table["best_val_acc"].max())
        out["train_seconds"] = float(table["train_seconds"].sum())
        if {"started_at", "ended_at"} <= set(table):
            t = table.dropna(subset=["started_at", "ended_at"]).sort_values("started_at")
            gaps = t["started_at"].values[1:] - t["ended_at"].values[:-1]
            gaps = [float(g) for g in gaps if g > 0]  # concurrent trials overlap
            # From one trial function's return to the next one's call (no model build in it)
            out["median_gap_end_to_start_s"] = statistics.median(gaps) if gaps else None
            out["span_s"] = float(t["ended_at"].max() - t["started_at"].min()) if len(t) else None
    pids, report_s, train_s = set(), 0.0, 0.0
    for trial in exp.glob("trial_*/result.json"):
        lines = [json.loads(x) for x in trial.read_text().splitlines() if x.strip()]
        pids.update(line.get("pid") for line in lines if "pid" in line)
        epochs = [line for line in lines if "epoch_seconds" in line]
        if epochs:
            report_s += epochs[-1].get("report_seconds", 0.0)
            train_s += epochs[-1].get("train_seconds", 0.0)
    out["worker_processes"] = len(pids)
    if train_s:
        out["report_share_of_training"] = report_s / train_s
    final = exp / "final" / "metrics.json"
    if final.is_file():
        m = json.loads(final.read_text())
        out["retrain"] = {
            k: m.get(k) for k in ("test_acc_mean", "test_acc_std", "epochs", "params", "seconds")
        }
    return out


def check_returnable(root: Path) -> list[str]:
    """Why `root` would not come back from a lent GPU machine whole (empty: it would)."""
    problems, files = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_symlink():
            problems.append(f"{rel}: a link")
        elif p.is_file():
            files.append(p)
            if len(rel.parts) > 3:
                problems.append(f"{rel}: deeper than OUT/a/b/file")
            if p.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{rel}: over 16 MiB")
        if not all(part.replace(".", "").replace("_", "").replace("-", "").isalnum()
                   and part.isascii() for part in rel.parts):  # fmt: skip
            problems.append(f"{rel}: a name other than letters, digits, '.', '_', '-'")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files > {MAX_FILES}")
    return problems


def format_results(r: dict[str, Any]) -> str:
    lines = [
        f"# Campaign, part {r['part']}{' (CPU smoke run, not a speed claim)' if r['smoke'] else ''}",
        "",
        f"{r['date']}; `{r['command']}`; code {r['code_version']}; deadline {r['deadline_s']:.0f} s,"
        f" {r.get('elapsed_s', 0):.0f} s used{'; finished' if r.get('done') else '; still running'}.",
    ]
    pre = r.get("preflight", {})
    if pre:
        lines += [
            "",
            f"Preflight: torch {pre.get('torch')}, torchvision {pre.get('torchvision')}, "
            f"Python {pre.get('python')}, GPU {pre.get('gpu', 'none')}, Ray GPUs "
            f"{pre.get('ray_gpus')}, {pre.get('train_images')} training images.",
        ]
    if r.get("stopped"):
        lines += ["", f"**Stopped**: {r['stopped']}"]
    lines += ["", "| step | status | seconds | limit | command |", "|---|---|---|---|---|"]
    for s in r["steps"]:
        why = f" ({s['reason']})" if s.get("reason") else ""
        lines.append(
            f"| {s['name']} | {s['status']}{why} | {s.get('seconds', 0):.0f} | "
            f"{s.get('limit_s', 0):.0f} | `{' '.join(s['command'])}` |"
        )
    f = r["figures"]
    models = f.get("bench_models", {}).get("models", {})
    for name, m in models.items():
        ours, usual = m.get("variants", {}).get("ours"), m.get("usual")
        if ours:
            lines += ["", f"`{name}` ({m['params']:,} params): {ours['epoch_seconds']:.2f} s per "
                      f"epoch of {f['bench_models']['train_images']:,} images with our loop"
                      + (f", {usual['epoch_seconds']:.1f} s with the usual loop "
                         f"({m['speedup']:.1f}x)" if usual else "") + "."]  # fmt: skip
    for label, rows in f.get("bench_packing", {}).get("packing", {}).items():
        cells = ", ".join(f"{x['concurrent']}: {x['total_images_per_sec']:,.0f}" for x in rows)
        lines += ["", f"Packing, {label}: total img/s by concurrent trials: {cells}."]
    if r.get("plan"):
        lines += ["", "Plan:", ""] + [f"- {line}" for line in r["plan"]["lines"]]
    for label in ("seeds", "search"):
        if f.get(label):
            lines += ["", f"{label}: `{json.dumps(f[label], default=str)}`"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.campaign",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="CIFAR-10 folder or archive")
    p.add_argument("--out", required=True, type=Path, help="results folder (what comes back)")
    p.add_argument(
        "--work",
        type=Path,
        help="experiments, checkpoints and step logs (default: a new temporary folder)",
    )
    p.add_argument(
        "--deadline", type=float, default=540.0, help="seconds of wall time in all (default 540)"
    )
    p.add_argument(
        "--reserve",
        type=float,
        default=15.0,
        help="seconds kept for writing the results after the last step (default 15)",
    )
    p.add_argument("--part", type=int, choices=[1, 2], default=1, help="1: this lease; 2: later")
    p.add_argument("--smoke", action="store_true", help="CPU mode: tiny sizes (what CI runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="campaign-"))
    if math.isnan(args.deadline) or args.deadline <= args.reserve:
        build_parser().error(f"--deadline {args.deadline:g} must exceed --reserve {args.reserve:g}")
    return Campaign(args).main()


if __name__ == "__main__":
    sys.exit(main())
