"""After the trials: one record per trial, the results table, the best configuration, its
retrain on train + validation, and the report beside the seed baselines."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search_spaces import trial_configs
from training.artifacts import code_version, write_json
from training.config import cap_batch_size
from training.data import DataSplits, ImageSet
from training.logs import project_level
from tune.interrupt import get_interruptibly
from tune.results import (
    TrialRecord,
    asha_milestones,
    epoch_rows,
    rung_counts,
    trials_table,
    write_parquet,
    write_report,
)
from tune.settings import SearchSettings
from tune.storage import is_uri
from tune.study import close_study, param_importances

logger = logging.getLogger(__name__)
REPORT_FILES = ("report.md", "params_vs_acc.png", "curves.png", "rungs.png", "importances.png")


@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    table: pd.DataFrame  # trials.parquet
    meta: dict[str, Any]  # the settings and code version, in the table's metadata
    best: dict[str, Any] | None  # best_config.json; None if every trial failed
    importances: dict[str, float] | None = None  # None: the search had no Optuna study
    importances_basis: str = ""  # which trials the importances were measured over


def collect_records(grid: Any) -> list[TrialRecord]:
    """One record per trial of Ray's ResultGrid; the network of each comes from its config
    (the width scale its sample was fitted with), not from a new fit."""
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
            arch = trial_configs(config)[0].to_dict()
            epochs = epoch_rows(history)
            if "params" not in config and "params" in epochs and len(epochs):
                config["params"] = int(epochs["params"].iloc[-1])
        error = None
        if result.error is not None:
            error = str(result.error).strip().splitlines()[-1][:500]
        records.append(TrialRecord(trial_id, config, history, error, result.path, arch))
    return records


def summarize_trials(
    grid: Any, settings: SearchSettings, search_seconds: float, cluster_gpus: float
) -> SearchOutcome:
    """trials.parquet and, unless every trial failed, best_config.json: the best trial by
    validation accuracy with the configs its retrain will use."""
    exp = settings.storage.local_dir
    records = collect_records(grid)
    table = trials_table(records, settings.max_epochs)
    study = close_study(settings.storage, settings.max_epochs)
    importances, basis = None, ""
    if study is not None and len(table):
        states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
        table["optuna_state"] = table["config/trial_number"].map(states).fillna("")
        importances, basis = param_importances(study)
    meta = {**asdict(settings), "code_version": code_version()}
    write_parquet(exp / "trials.parquet", table, meta)
    ok = table[~table["status"].isin(["error", "failed"])].dropna(subset=["best_val_acc"])
    if not len(ok):
        settings.storage.push("trials.parquet")
        return SearchOutcome(records, table, meta, None, importances, basis)
    best_row = ok.iloc[0]
    best_record = next(r for r in records if r.trial_id == best_row["trial_id"])
    arch, cfg = trial_configs(best_record.config, settings.retrain_epochs)
    cfg = cap_batch_size(cfg, settings.max_batch_size)
    best = {
        "trial_id": best_row["trial_id"],
        "stages": best_row["stages"],
        "best_val_acc": float(best_row["best_val_acc"]),
        "params": int(best_record.config["params"]),
        "width_scale": float(best_record.config.get("width_scale", 1.0)),
        "seed": int(best_row["seed"]),
        "config": best_record.config,
        "arch": arch.to_dict(),
        "train_config": cfg.to_dict(),
        "code_version": code_version(),
        "search_seconds": search_seconds,
        "cluster_gpus": cluster_gpus,
        "trials": len(table),
    }
    write_json(exp / "best_config.json", best)
    settings.storage.push("trials.parquet", "best_config.json")
    logger.info(
        f"best trial {best['trial_id']}: val {best['best_val_acc']:.2%}, {best['params']:,} params"
    )
    return SearchOutcome(records, table, meta, best, importances, basis)


def retrain_best(
    settings: SearchSettings, best: dict[str, Any], splits: DataSplits, predict: ImageSet | None
) -> dict[str, Any]:
    """The best configuration trained on train + validation with --retrain-seeds seeds and
    tested. The seeds run as Ray tasks, each with a trial's resources: on a cluster they
    land on GPU workers like trials, and packed trials mean seeds packed the same way."""
    import ray

    from models import ArchConfig
    from training.config import TrainConfig
    from tune.retrain import concat_sets, retrain_seed_in_storage, summarize_in_storage

    arch = ArchConfig.from_dict(best["arch"])
    cfg = TrainConfig.from_dict(best["train_config"])
    use_gpu = settings.gpus_per_trial > 0
    resources = {"num_cpus": settings.cpus_per_trial, "num_gpus": settings.gpus_per_trial}
    seeds = [settings.seed + i for i in range(settings.retrain_seeds)]
    train = concat_sets(splits.train, splits.val)
    train_ref, test_ref = ray.put(train), ray.put(splits.test)
    threads = max(1, int(settings.cpus_per_trial))
    if not use_gpu:
        # On CPUs the seeds train alone after the trials: let them share every core.
        threads = max(threads, int(ray.cluster_resources().get("CPU", 1) // len(seeds)))
    common = {
        "device": "cuda" if use_gpu else "cpu",
        "threads": threads,
        "log_level": project_level(),
        "extra": {"search": settings.name, "trial_id": best["trial_id"]},
    }
    started = time.perf_counter()
    seed_task = ray.remote(retrain_seed_in_storage).options(**resources)
    per_seed = get_interruptibly(
        [
            seed_task.remote(
                settings.storage_path, settings.name, arch, cfg, train_ref, test_ref, seed, **common
            )
            for seed in seeds
        ]
    )
    summary_task = ray.remote(summarize_in_storage).options(**resources)
    [final] = get_interruptibly(
        [
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
                wall_seconds=time.perf_counter() - started,
                predict=predict,
                **common,
            )
        ]
    )
    logger.info(
        f"retrained: test {final['test_acc_mean']:.2%} +- {final['test_acc_std']:.2%} over "
        f"{len(final['test_acc'])} seed(s); wrote {settings.storage.uri}/final"
    )
    return final


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


def report(settings: SearchSettings, outcome: SearchOutcome, final: dict[str, Any] | None) -> Path:
    """report.md and its plots, written in the experiment and copied to its storage."""
    milestones = asha_milestones(
        settings.grace_period, settings.reduction_factor, settings.max_epochs
    )
    histories = {r.trial_id: r.history for r in outcome.records}
    path = write_report(
        settings.storage.local_dir,
        outcome.table,
        histories,
        rung_counts(outcome.table, milestones),
        outcome.best,
        final,
        find_seed_baseline(settings) if outcome.best else None,
        outcome.meta,
        outcome.importances,
        outcome.importances_basis,
    )
    settings.storage.push(*REPORT_FILES)
    return path
