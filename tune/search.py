"""Search a space of CIFAR-10 ResNets and recipes under a parameter budget, then retrain
the best and test it.

    python -m tune.search --space efficient_resnet --data DIR

Ray Tune runs the trials (an embedded local Ray, or a cluster with --address), Optuna
suggests configurations, ASHA stops weak trials early. The experiment folder
(STORAGE/NAME) then holds the trials with their TensorBoard logs, trials.parquet,
best_config.json, final/ (retrained checkpoints, metrics.json, predictions.csv) and
report.md. Re-running with the same --name (or --resume) continues an interrupted search.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from models import DEFAULT_BUDGET
from search_spaces import BudgetTooSmallError, get_space, list_spaces, raw_params
from search_spaces.spaces import SPACES
from training.artifacts import code_version, write_json
from training.config import TrainConfig, cap_batch_size
from training.data import DataError, load_cifar10, load_images
from training.loop import DataSplits
from training.train import make_splits
from tune.results import (
    TrialRecord,
    asha_milestones,
    epoch_rows,
    rung_counts,
    trials_table,
    write_parquet,
    write_report,
)
from tune.storage import ExperimentStorage, StorageError, is_uri

# What a search without a GPU does unless told otherwise: a few minutes on a laptop CPU.
REDUCED = {
    "num_samples": 4,
    "max_epochs": 2,
    "grace_period": 1,
    "retrain_epochs": None,  # None: the trials' max_epochs
    "retrain_seeds": 1,
    "subset": 500,
    # CPU training keeps every activation of a batch in host memory: batch 1024 through a
    # wide 32x32 stage took 19 GB and Ray's memory monitor killed the trial.
    "max_batch_size": 128,
}
FULL = {
    "num_samples": 64,
    "max_epochs": 30,
    "grace_period": 4,
    "retrain_epochs": None,  # None: the trials' max_epochs
    "retrain_seeds": 3,
    "subset": None,
    "max_batch_size": None,
}


class UsageError(ValueError):
    """A bad command-line input, found before Ray starts."""


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines an experiment; saved in it so a resume reuses it exactly."""

    space: str
    name: str
    storage_path: str
    data: str | None
    budget: int
    seed: int
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    gpus_per_trial: float
    cpus_per_trial: float
    retrain_epochs: int
    retrain_seeds: int
    subset: int | None
    max_batch_size: int | None  # cap on every trial's and the retrain's batch size
    predict: str | None
    reduced: str  # why and how the run was reduced, or ""
    time_budget_s: float | None = None  # no trial starts after this many seconds; None = none

    @property
    def storage(self) -> ExperimentStorage:
        return ExperimentStorage(self.storage_path, self.name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tune.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--space", default="efficient_resnet", help="search space (see --list-spaces)")
    a("--list-spaces", action="store_true", help="list the search spaces and exit")
    a("--data", help="CIFAR-10 folder or archive; omit to download with torchvision")
    a("--budget", type=int, default=DEFAULT_BUDGET, help="max trainable parameters per model")
    a(
        "--num-samples",
        type=int,
        help="trials to run (64; 4 without a GPU; unlimited with --time-budget)",
    )
    a(
        "--time-budget",
        type=parse_duration,
        help="stop the search after this long (e.g. 90s, 45m, 2h), then retrain the best",
    )
    a("--max-epochs", type=int, help="epochs of a trial that ASHA never stops (30; 2 without GPU)")
    a("--grace-period", type=int, help="ASHA: epochs before a trial may be stopped (4; 1)")
    a("--reduction-factor", type=int, default=2, help="ASHA: keep 1/this many at each rung")
    a("--gpus-per-trial", type=float, help="GPUs per trial, fractions share a GPU (1; 0 on CPU)")
    a("--cpus-per-trial", type=float, default=1, help="CPUs per trial")
    a("--address", help="an existing Ray cluster (e.g. 10.0.0.5:6379 or auto)")
    a("--storage-path", default="experiments", help="local folder or s3:// / gs:// URI")
    a("--name", help="experiment name (default: SPACE-DATE-TIME); an existing one resumes")
    a("--resume", action="store_true", help="continue the experiment --name (or the latest)")
    a("--seed", type=int, default=0, help="seeds the searcher and, derived, every trial")
    a("--retrain-epochs", type=int, help="epochs of the final retrain (default: --max-epochs)")
    a("--retrain-seeds", type=int, help="seeds of the final retrain (3; 1 without a GPU)")
    a("--predict", help="unlabeled pickle (b'data', b'ids') to write final/predictions.csv for")
    a("--subset", type=int, help="use N training images (1000 without a GPU)")
    a("--full", action="store_true", help="no reduced run even without a GPU")
    a("--skip-retrain", action="store_true", help="stop after the search and its report")
    return p


# With --time-budget and no --num-samples, the budget alone ends the search.
UNLIMITED_SAMPLES = 100_000
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '45m', '2h' or a plain number of seconds -> seconds."""
    value, unit = text.strip(), "s"
    if value and value[-1].lower() in _DURATION_UNITS:
        value, unit = value[:-1], value[-1].lower()
    try:
        seconds = float(value) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a positive number with s, m or h, e.g. 45m"
        )
    return seconds


def format_space_list() -> str:
    width = max(map(len, SPACES))
    return "\n".join(f"{name:<{width}}  {s.description}" for name, s in SPACES.items())


def _latest_experiment(storage: Path, space: str) -> str:
    candidates = sorted(
        (p for p in storage.glob(f"{space}-*") if (p / "search_settings.json").exists()),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise UsageError(
            f"--resume: no experiment of space {space!r} in {storage}; pass --name of the "
            "experiment to continue"
        )
    return candidates[-1].name


def validate_args(args: argparse.Namespace) -> None:
    """Every check that needs no data and no Ray, so a typo fails in a second."""
    if args.space not in SPACES:
        raise UsageError(
            f"unknown search space {args.space!r}; valid spaces: {', '.join(list_spaces())}"
        )
    for flag in (
        "num_samples",
        "max_epochs",
        "grace_period",
        "retrain_epochs",
        "retrain_seeds",
        "subset",
    ):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} is {value}; it must be a positive number")
    if args.reduction_factor < 2:
        raise UsageError(f"--reduction-factor is {args.reduction_factor}; it must be at least 2")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial is {args.gpus_per_trial}; it must be 0 or more")
    if args.data is not None and not Path(args.data).exists():
        raise UsageError(
            f"--data {args.data} does not exist; pass a CIFAR-10 folder or archive "
            "(or omit --data to download CIFAR-10 with torchvision)"
        )
    if args.predict is not None and not Path(args.predict).is_file():
        raise UsageError(f"--predict {args.predict} is not a file; pass an unlabeled pickle")
    get_space(args.space).check_budget(args.budget)


def open_storage(args: argparse.Namespace) -> tuple[ExperimentStorage, SearchSettings | None]:
    """The experiment's storage (probed for writing) and its saved settings, if it has some:
    an experiment that exists is continued with the settings it started with."""
    root = (
        args.storage_path
        if is_uri(args.storage_path)
        else str(Path(args.storage_path).expanduser().resolve())
    )
    name = args.name
    if args.resume and name is None:
        if is_uri(root):
            raise UsageError("--resume with a cloud --storage-path needs the experiment's --name")
        name = _latest_experiment(Path(root), args.space)
    if name is None:
        name = f"{args.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = ExperimentStorage(root, name)
    storage.check_writable()
    if storage.pull("search_settings.json"):
        saved = json.loads((storage.local_dir / "search_settings.json").read_text())
        settings = SearchSettings(**saved)
        print(f"continuing experiment {storage.uri} with its saved settings", flush=True)
        return storage, settings
    if args.resume:
        raise UsageError(f"--resume: no experiment {name!r} in {root} to continue")
    return storage, None


def resolve_settings(
    args: argparse.Namespace, storage: ExperimentStorage, have_gpu: bool
) -> SearchSettings:
    """Fill the defaults, reduced ones when the cluster has no GPU."""
    defaults = FULL if have_gpu or args.full else REDUCED
    reduced = ""
    if defaults is REDUCED:
        reduced = (
            "no GPU found, so unset options take small values: "
            + ", ".join(
                f"{k.replace('_', '-')} {v}"
                for k, v in REDUCED.items()
                if getattr(args, k, None) is None
                and v is not None
                and not (k == "num_samples" and args.time_budget is not None)
            )
            + " (pass --full or set them to override)"
        )
    pick = {
        k: getattr(args, k) if getattr(args, k, None) is not None else v
        for k, v in defaults.items()
    }
    if args.time_budget is not None and args.num_samples is None:
        pick["num_samples"] = UNLIMITED_SAMPLES
    max_epochs = pick["max_epochs"]
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if have_gpu else 0.0)
    return SearchSettings(
        space=args.space,
        name=storage.name,
        storage_path=storage.storage_path,
        data=str(Path(args.data).resolve()) if args.data else None,
        budget=args.budget,
        seed=args.seed,
        num_samples=pick["num_samples"],
        max_epochs=max_epochs,
        grace_period=min(pick["grace_period"], max_epochs),
        reduction_factor=args.reduction_factor,
        gpus_per_trial=gpus,
        cpus_per_trial=args.cpus_per_trial,
        retrain_epochs=pick["retrain_epochs"] or max_epochs,
        retrain_seeds=pick["retrain_seeds"],
        subset=pick["subset"],
        max_batch_size=defaults["max_batch_size"],
        predict=str(Path(args.predict).resolve()) if args.predict else None,
        reduced=reduced,
        time_budget_s=args.time_budget,
    )


# Set before Ray is imported: our own TensorBoard writer replaces Ray's, the experiment
# state is saved every 5 s (a killed driver loses little), and logs are not de-duplicated.
RAY_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_GLOBAL_CHECKPOINT_S": "5",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "0",
}


def _start_ray(address: str | None) -> None:
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not address:
        # The embedded local Ray binds its servers to the loopback interface, so nothing of
        # it is reachable from outside this machine. Ray binds to the machine's network
        # address unless told it runs on one machine only, which it reads at import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    # No dashboard either way: it would be one more open port with no authentication.
    ray.init(address=address or None, include_dashboard=False, log_to_driver=True)


def short_trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _make_tuner(settings: SearchSettings, trainable: Any, slots: int):
    import optuna
    from ray import tune as ray_tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tune.trainable import SpaceSampler

    space = get_space(settings.space)
    if space.fixed_trials:
        # Fixed trials are baselines: each runs its whole schedule, none is stopped early.
        scheduler = FIFOScheduler()
        search_alg = None
        keys = sorted(space.fixed_trials[0])
        param_space: dict[str, Any] = {
            key: ray_tune.grid_search([t[key] for t in space.fixed_trials]) for key in keys
        }
        param_space.update(space=settings.space, budget=settings.budget, seed=settings.seed)
        num_samples = 1  # the grid itself is the set of trials
    else:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=settings.max_epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search_alg = OptunaSearch(
            space=SpaceSampler(settings.space, settings.budget, settings.seed),
            metric="val_acc",
            mode="max",
            sampler=optuna.samplers.TPESampler(
                seed=settings.seed, n_startup_trials=max(4, min(10, settings.num_samples // 4))
            ),
            # The space's known-good configurations are its first trials (Optuna's
            # enqueue_trial); they are trained and judged like every other trial.
            points_to_evaluate=[dict(point) for point in space.starting_points] or None,
        )
        param_space = {}
        num_samples = settings.num_samples
    return ray_tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray_tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            metric="val_acc",
            mode="max",
            num_samples=num_samples,
            trial_dirname_creator=short_trial_dirname,
            # With a searcher Ray starts one trial at a time unless told how many fit.
            max_concurrent_trials=slots or None,
            time_budget_s=settings.time_budget_s,
        ),
        run_config=ray_tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage_path,
            failure_config=ray_tune.FailureConfig(max_failures=2),
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
            sync_config=ray_tune.SyncConfig(sync_artifacts=True),
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
            verbose=1,
        ),
    )


def _replay_asha(tuner: Any, metric: str = "val_acc") -> int:
    """Ray restores the ASHA scheduler object but not what its rungs recorded, so a resumed
    search would compare new trials against empty rungs. Refill them from the results."""
    scheduler = tuner._local_tuner._tune_config.scheduler
    filled = 0
    for result in tuner.get_results():
        history = result.metrics_dataframe
        if history is None or metric not in history or not len(history):
            continue
        trial_id = history["trial_id"].iloc[-1]
        for bracket in scheduler._brackets:
            for milestone, recorded in bracket._rungs:
                reached = history[history["training_iteration"] >= milestone]
                if len(reached):
                    recorded[trial_id] = float(reached[metric].iloc[0])
                    filled += 1
    return filled


def _fits(available: float, per_trial: float) -> int:
    """How many shares of `per_trial` fit in `available`; 1 / 0.2 is 5, not float's 4."""
    return int(available / per_trial + 1e-9) if per_trial > 0 else 0


def trial_slots(settings: SearchSettings, nodes: list[dict[str, Any]]) -> int:
    """How many trials fit on the cluster's live nodes at once (a trial stays on one node)."""
    slots = 0
    for node in nodes:
        res = node.get("Resources", {})
        by_cpu = _fits(res.get("CPU", 0), settings.cpus_per_trial)
        if settings.gpus_per_trial > 0:
            slots += min(by_cpu, _fits(res.get("GPU", 0), settings.gpus_per_trial))
        else:
            slots += by_cpu
    return slots


def run_search(settings: SearchSettings, splits: DataSplits, slots: int) -> Any:
    from ray import tune as ray_tune

    from tune.trainable import TrialSettings, run_trial

    trial_data = DataSplits(train=splits.train, val=splits.val)  # trials never see test
    trial_settings = TrialSettings(
        max_epochs=settings.max_epochs,
        max_batch_size=settings.max_batch_size,
        use_gpu=settings.gpus_per_trial > 0,
        threads=max(1, int(settings.cpus_per_trial)),
    )
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(run_trial, data=trial_data, settings=trial_settings),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    path = settings.storage.uri
    if ray_tune.Tuner.can_restore(path):
        print(f"resuming the search in {path}", flush=True)
        tuner = ray_tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        kind = type(tuner._local_tuner._tune_config.scheduler).__name__
        print(f"scheduler {kind}; refilled {_replay_asha(tuner)} ASHA rung entries", flush=True)
    else:
        tuner = _make_tuner(settings, trainable, slots)
    return tuner.fit()


def collect_records(grid: Any, settings: SearchSettings) -> list[TrialRecord]:
    space = get_space(settings.space)
    records = []
    for result in grid:
        history = result.metrics_dataframe
        if history is None:
            history = pd.DataFrame()
        config = dict(result.config or {})
        trial_id = (
            str(history["trial_id"].iloc[-1])
            if "trial_id" in history and len(history)
            else Path(result.path).name.removeprefix("trial_")
        )
        arch = {}
        if config:
            arch = space.resolve(raw_params(config), settings.budget)[0].to_dict()
            epochs = epoch_rows(history)
            if "params" not in config and "params" in epochs and len(epochs):
                config["params"] = int(epochs["params"].iloc[-1])
        error = None
        if result.error is not None:
            error = str(result.error).strip().splitlines()[-1][:500]
        records.append(TrialRecord(trial_id, config, history, error, result.path, arch))
    return records


def find_seed_baseline(settings: SearchSettings) -> dict[str, Any] | None:
    """The newest `--space seeds` experiment in the same storage folder, summarized: its best
    network by validation accuracy, every seed network's validation accuracy, and its
    retrain's test accuracy and GPU time where it has them."""
    if is_uri(settings.storage_path):
        return None
    for folder in sorted(
        Path(settings.storage_path).glob("*/trials.parquet"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    ):
        table = pd.read_parquet(folder)
        if (
            "config/space" not in table
            or not (table["config/space"] == "seeds").all()
            or folder.parent == settings.storage.local_dir
        ):
            continue
        exp = folder.parent
        ranked = table.dropna(subset=["best_val_acc"]).sort_values("best_val_acc", ascending=False)
        if not len(ranked):
            continue
        top = ranked.iloc[0]
        baseline: dict[str, Any] = {
            "experiment": exp.name,
            "preset": str(top.get("config/preset", top["trial_id"])),
            "params": int(top["params"]),
            "stages": str(top.get("stages", "")),
            "best_val_acc": float(top["best_val_acc"]),
            "epochs": int(top["epochs_run"]),
            "seed_val_accs": {
                str(row.get("config/preset", row["trial_id"])): float(row["best_val_acc"])
                for _, row in ranked.iterrows()
            },
        }
        for name, key in (("best_config.json", "best"), ("final/metrics.json", "final")):
            if (exp / name).exists():
                baseline[key] = json.loads((exp / name).read_text())
        return baseline
    return None


def check_resources(settings: SearchSettings, nodes: list[dict[str, Any]], local: bool) -> None:
    """A trial must fit on one node; on a fixed (local) cluster it must fit now."""
    largest = max((n.get("Resources", {}).get("GPU", 0) for n in nodes), default=0)
    if settings.gpus_per_trial > largest and (local or largest > 0):
        raise UsageError(
            f"--gpus-per-trial {settings.gpus_per_trial:g} asks for more GPUs than any node of "
            f"the Ray cluster has ({largest:g}); pass --gpus-per-trial {largest:g} or less"
            + ("" if local else ", or add larger GPU nodes")
        )
    if settings.gpus_per_trial > largest:
        print(
            "no GPU node is up yet: trials wait until the cluster's autoscaler adds one",
            flush=True,
        )


def retrain_best(
    settings: SearchSettings, arch: Any, cfg: Any, splits: DataSplits, predict: Any, best: dict
) -> dict[str, Any]:
    """The retrain's seeds run as Ray tasks, each with a trial's resources: on a cluster they
    land on GPU workers like trials, and packed trials mean seeds packed the same way."""
    import ray

    from tune.retrain import concat_sets, retrain_seed_in_storage, summarize_in_storage

    use_gpu = settings.gpus_per_trial > 0
    resources = {"num_cpus": settings.cpus_per_trial, "num_gpus": settings.gpus_per_trial}
    seeds = [settings.seed + i for i in range(settings.retrain_seeds)]
    train = concat_sets(splits.train, splits.val)
    train_ref, test_ref = ray.put(train), ray.put(splits.test)
    common = {
        "device": "cuda" if use_gpu else "cpu",
        "threads": max(1, int(settings.cpus_per_trial)),
        "extra": {"search": settings.name, "trial_id": best["trial_id"]},
    }
    started = time.perf_counter()
    seed_task = ray.remote(retrain_seed_in_storage).options(**resources)
    per_seed = ray.get(
        [
            seed_task.remote(
                settings.storage_path, settings.name, arch, cfg, train_ref, test_ref, seed, **common
            )
            for seed in seeds
        ]
    )
    wall_seconds = time.perf_counter() - started
    summary_task = ray.remote(summarize_in_storage).options(**resources)
    return ray.get(
        summary_task.remote(
            settings.storage_path,
            settings.name,
            arch,
            cfg,
            len(train),
            test_ref,
            per_seed,
            seeds=seeds,
            gpu_share=min(1.0, settings.gpus_per_trial),
            wall_seconds=wall_seconds,
            predict=predict,
            **common,
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_spaces:
        print(format_space_list())
        return 0
    try:
        validate_args(args)
        storage, saved = open_storage(args)
        data = load_cifar10(saved.data if saved else args.data)
        predict_path = saved.predict if saved else args.predict
        predict = load_images(predict_path) if predict_path else None
    except (UsageError, BudgetTooSmallError, DataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    _start_ray(args.address)
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    have_gpu = any(n.get("Resources", {}).get("GPU", 0) > 0 for n in nodes)
    try:
        settings = saved or resolve_settings(args, storage, have_gpu)
        check_resources(settings, nodes, local=args.address is None)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if settings.reduced:
        print(f"reduced run: {settings.reduced}", flush=True)
    exp = storage.local_dir
    write_json(exp / "search_settings.json", asdict(settings))
    storage.push("search_settings.json")
    splits = make_splits(data, TrainConfig(), settings.subset, seed=settings.seed)
    count = "" if settings.num_samples >= UNLIMITED_SAMPLES else f"{settings.num_samples} "
    limit = f" for at most {settings.time_budget_s / 60:.1f} min" if settings.time_budget_s else ""
    print(
        f"search {settings.name}: space {settings.space}, {count}trials of up to "
        f"{settings.max_epochs} epochs{limit}, budget {settings.budget:,} params, "
        f"{len(splits.train):,} train / {len(splits.val):,} val images; folder {storage.uri}",
        flush=True,
    )
    started = time.perf_counter()
    grid = run_search(settings, splits, trial_slots(settings, nodes))
    records = collect_records(grid, settings)
    table = trials_table(records, settings.max_epochs)
    meta = {**asdict(settings), "code_version": code_version()}
    write_parquet(exp / "trials.parquet", table, meta)
    histories = {r.trial_id: r.history for r in records}
    milestones = asha_milestones(
        settings.grace_period, settings.reduction_factor, settings.max_epochs
    )
    rungs = rung_counts(table, milestones)
    outputs = ["trials.parquet", "report.md", "params_vs_acc.png", "curves.png", "rungs.png"]

    ok = table[~table["status"].isin(["error", "failed"])].dropna(subset=["best_val_acc"])
    if not len(ok):
        print(
            "error: every trial failed; see the error column of trials.parquet and the "
            "trials' error.txt",
            file=sys.stderr,
        )
        write_report(exp, table, histories, rungs, None, None, None, meta)
        storage.push(*outputs)
        return 1
    best_row = ok.iloc[0]
    best_record = next(r for r in records if r.trial_id == best_row["trial_id"])
    arch, cfg, params, scale = get_space(settings.space).resolve(
        raw_params(best_record.config), settings.budget, settings.retrain_epochs
    )
    cfg = cap_batch_size(cfg, settings.max_batch_size)
    best = {
        "trial_id": best_row["trial_id"],
        "stages": best_row["stages"],
        "best_val_acc": float(best_row["best_val_acc"]),
        "params": params,
        "width_scale": scale,
        "seed": int(best_row["seed"]),
        "config": best_record.config,
        "arch": arch.to_dict(),
        "train_config": cfg.to_dict(),
        "code_version": code_version(),
        "search_seconds": time.perf_counter() - started,
        "cluster_gpus": sum(n.get("Resources", {}).get("GPU", 0) for n in nodes),
        "trials": len(table),
    }
    write_json(exp / "best_config.json", best)
    storage.push("trials.parquet", "best_config.json")
    print(
        f"best trial {best['trial_id']}: val {best['best_val_acc']:.2%}, {params:,} params",
        flush=True,
    )

    final = None
    if not args.skip_retrain:
        final = retrain_best(settings, arch, cfg, splits, predict, best)
        print(
            f"retrained: test {final['test_acc_mean']:.2%} +- {final['test_acc_std']:.2%} over "
            f"{len(final['test_acc'])} seed(s); wrote {storage.uri}/final",
            flush=True,
        )
    write_report(exp, table, histories, rungs, best, final, find_seed_baseline(settings), meta)
    storage.push(*outputs)
    print(
        f"report: {storage.uri}/report.md\nTensorBoard: tensorboard --logdir {storage.uri}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
