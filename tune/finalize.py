"""After the trials: one record per trial, the results table, the best configuration, its
retrain on train + validation, and the report beside the seed baselines."""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from models import SEED_MODELS, count_params, get_arch
from search_spaces import derive_seed, trial_configs
from training.artifacts import code_version, write_json
from training.config import cap_batch_size
from training.data import DataSplits, ImageSet
from training.logs import project_level
from tune.compare import MATCHING, matching_command, setting_differences
from tune.faults import pause_at
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
from tune.settings import SETTINGS_FILE, SearchSettings
from tune.storage import is_uri
from tune.study import MIN_TRIALS_FOR_IMPORTANCES, close_study, param_importances

logger = logging.getLogger(__name__)
REPORT_FILES = ("report.md", "params_vs_acc.png", "curves.png", "rungs.png", "importances.png")


# Where a search's other Ray experiments live inside its folder, and the baseline's retrain.
FINALISTS_DIR, BASELINE_DIR, BASELINE_FINAL = "finalists", "baseline", "baseline_final"


@dataclass
class SearchOutcome:
    records: list[TrialRecord]
    table: pd.DataFrame  # trials.parquet
    meta: dict[str, Any]  # the settings and code version, in the table's metadata
    best: dict[str, Any] | None  # best_config.json; None if no trial trained every epoch
    importances: dict[str, float] | None = None  # None: the search had no Optuna study
    finalists: pd.DataFrame | None = None  # `finalist_ranking`
    baseline: dict[str, Any] | None = None  # the best seed network, here or found elsewhere
    importances_basis: str = ""  # which trials the importances were measured over


def collect_records(grid: Any, role: str = "search") -> list[TrialRecord]:
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
        records.append(TrialRecord(trial_id, config, history, error, result.path, arch, role))
    return records


def candidates(table: pd.DataFrame) -> pd.DataFrame:
    """The search's trials that trained every epoch, best score first: the only candidates
    for the winner (a trial ASHA stopped early never is one; its accuracy is of a shorter,
    unfinished schedule)."""
    if not len(table):
        return table
    rows = table[(table["role"] == "search") & (table["status"] == "completed")]
    return rows.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable")


def finalist_seed(base_seed: int, trial_number: int, run: int) -> int:
    """The seed of a finalist's re-run `run` (0, 1, ...): never the search trial's own."""
    return (derive_seed(base_seed, trial_number) + 1 + run) & 0x7FFFFFFF


def finalist_configs(
    table: pd.DataFrame, records: list[TrialRecord], settings: SearchSettings
) -> list[dict[str, Any]]:
    """The top --finalists candidates' configurations, --finalist-seeds times each with new
    seeds. A re-run is no trial of the Optuna study: `finalist_of` (the search trial's number)
    replaces its `trial_number`. No rungs: no scheduler stops a re-run, so a decay branch at
    the search's rungs would be computed for nothing (about a tenth more epochs)."""
    by_id = {r.trial_id: r for r in records}
    configs = []
    for trial_id in candidates(table)["trial_id"].head(settings.finalists):
        config = {**by_id[trial_id].config, "rung_epochs": []}
        number = int(config.pop("trial_number"))
        config.pop("bracket", None)  # no ASHA bracket: nothing stops a re-run
        for run in range(settings.finalist_seeds):
            seed = finalist_seed(settings.seed, number, run)
            configs.append({**config, "seed": seed, "finalist_of": number})
    return configs


def finalist_ranking(table: pd.DataFrame, finalists: int) -> pd.DataFrame:
    """The top `finalists` candidates (at least one), ranked by their finalist re-runs alone:
    each with the scores of its re-runs that trained every epoch (`scores`; their number
    `runs`, mean `val_mean`, std `val_std`, NaN below two), the search trial's own score
    beside them (`search_score`), the search's order (`search_rank`) and the new one (`rank`).
    The first row is the winner.

    The search score does not count: a finalist was chosen for being among the highest of many
    noisy runs, so that run is biased upward (a winner's curse, the strongest for the search's
    best), while its re-runs' seeds were chosen by nothing. Mixing it in mostly keeps the
    search's order and overstates the winner's score. A candidate without a full re-run (none
    were asked for, or each failed) ranks after those with one, in the search's order; with no
    re-runs at all the order is the search's."""
    top = candidates(table).head(max(1, finalists))
    reruns = table[(table["role"] == "finalist") & (table["status"] == "completed")]
    if "config/finalist_of" not in reruns:
        reruns = reruns.assign(**{"config/finalist_of": math.nan})
    rows = []
    for search_rank, (_, row) in enumerate(top.iterrows(), 1):
        mine = reruns["config/finalist_of"] == row["config/trial_number"]
        scores = [float(x) for x in reruns.loc[mine, "score"]]
        rows.append(
            {
                "trial_id": row["trial_id"],
                "stages": row["stages"],
                "params": int(row["params"]),
                "search_rank": search_rank,
                "search_score": float(row["score"]),
                "runs": len(scores),
                "val_mean": statistics.fmean(scores) if scores else math.nan,
                "val_std": statistics.stdev(scores) if len(scores) > 1 else math.nan,
                "scores": scores,
            }
        )
    ranking = pd.DataFrame(rows)
    if len(ranking):
        ranking = ranking.sort_values(
            "val_mean", ascending=False, na_position="last", kind="stable"
        )
        ranking["rank"] = range(1, len(ranking) + 1)
    return ranking.reset_index(drop=True)


def _chosen(record: TrialRecord, row: pd.Series, settings: SearchSettings) -> dict[str, Any]:
    """A trial's configuration as its retrain needs it: the network and training config at
    --retrain-epochs."""
    arch, cfg = trial_configs(record.config, settings.retrain_epochs)
    cfg = cap_batch_size(cfg, settings.max_batch_size).replace(precision=settings.precision)
    return {
        "trial_id": row["trial_id"],
        "stages": row["stages"],
        "score": float(row["score"]),
        "best_val_acc": float(row["best_val_acc"]),
        "params": int(record.config["params"]),
        "width_scale": float(record.config.get("width_scale", 1.0)),
        "seed": int(row["seed"]),
        "config": record.config,
        "arch": arch.to_dict(),
        "train_config": cfg.to_dict(),
        "code_version": code_version(),
    }


def baseline_from_table(
    table: pd.DataFrame, records: list[TrialRecord], settings: SearchSettings
) -> dict[str, Any] | None:
    """The best seed network trained in this experiment (--baseline seeds), by score."""
    rows = table[(table["role"] == "baseline") & (table["status"] == "completed")]
    rows = rows.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable")
    if not len(rows):
        return None
    top = rows.iloc[0]
    record = next(r for r in records if r.trial_id == top["trial_id"])
    preset = str(record.config["preset"])
    return {
        **_chosen(record, top, settings),
        "experiment": f"{settings.name}/{BASELINE_DIR}",
        "preset": preset,
        "preset_params": count_params(get_arch(preset)),
        "epochs": int(top["epochs_run"]),
        "seed_val_accs": {
            str(row["config/preset"]): float(row["score"]) for _, row in rows.iterrows()
        },
        "settings": _matching_settings(asdict(settings)),
    }


def _matching_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: settings.get(key) for key in (*MATCHING, "storage_path")}


def summarize_trials(
    records: list[TrialRecord],
    settings: SearchSettings,
    search_seconds: float,
    cluster_gpus: float,
    baseline: dict[str, Any] | None = None,
) -> SearchOutcome:
    """trials.parquet (the search's trials, the finalists' re-runs and the seed baselines,
    told apart by `role`) and, if a trial trained every epoch, best_config.json: the winner
    of the finalists by mean score over their runs, with the configs its retrain will use.
    `baseline`: one found elsewhere; without it, the seed networks trained here, if any."""
    exp = settings.storage.local_dir
    table = trials_table(records, settings.max_epochs)
    study = close_study(settings.storage, settings.max_epochs)
    importances, basis = None, ""
    if study is not None and len(table):
        states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
        search = table["role"] == "search"
        table["optuna_state"] = ""
        if "config/trial_number" not in table:  # no trial ever reported (and carried its config)
            table["config/trial_number"] = math.nan
        table.loc[search, "optuna_state"] = (
            table.loc[search, "config/trial_number"].map(states).fillna("")
        )
        importances, basis = param_importances(study)
    meta = {**asdict(settings), "code_version": code_version()}
    write_parquet(exp / "trials.parquet", table, meta)
    if baseline is None and len(table):
        baseline = baseline_from_table(table, records, settings)
    ranking = finalist_ranking(table, settings.finalists) if len(table) else pd.DataFrame()
    if not len(ranking):
        settings.storage.push("trials.parquet")
        return SearchOutcome(
            records, table, meta, None, importances, None, baseline, importances_basis=basis
        )
    winner = ranking.iloc[0]
    row = table[table["trial_id"] == winner["trial_id"]].iloc[0]
    record = next(r for r in records if r.trial_id == winner["trial_id"])
    # Its validation score: the mean of its re-runs where it has any (`score` is the search
    # run's, which chose it and so overstates it), with their std where there are two.
    rerun_stats = {}
    if winner["runs"]:
        rerun_stats["val_mean"] = float(winner["val_mean"])
    if winner["runs"] > 1:
        rerun_stats["val_std"] = float(winner["val_std"])
    best = {
        **_chosen(record, row, settings),
        **rerun_stats,
        "val_runs": winner["scores"],
        "search_seconds": search_seconds,
        "cluster_gpus": cluster_gpus,
        "trials": int((table["role"] == "search").sum()),
    }
    write_json(exp / "best_config.json", best)
    settings.storage.push("trials.parquet", "best_config.json")
    if winner["runs"]:
        spread = f" +- {winner['val_std']:.2%}" if winner["runs"] > 1 else ""
        validation = f"{winner['val_mean']:.2%}{spread} over {int(winner['runs'])} re-run(s)"
    else:
        validation = f"{best['score']:.2%} in the search (no re-runs)"
    logger.info(
        f"winner: trial {best['trial_id']}, validation {validation}, {best['params']:,} params"
    )
    return SearchOutcome(
        records, table, meta, best, importances, ranking, baseline, importances_basis=basis
    )


def run_finalists(
    settings: SearchSettings,
    splits: DataSplits,
    records: list[TrialRecord],
    concurrency: int,
) -> list[TrialRecord]:
    """The top --finalists configurations re-run with --finalist-seeds new seeds each, at the
    full epochs, as trials of the experiment's finalists/ (continued if it exists)."""
    from tune.runner import run_fixed_trials

    if settings.finalists < 1:
        return []
    configs = finalist_configs(trials_table(records, settings.max_epochs), records, settings)
    if not configs:
        return []
    logger.info(
        "finalists: %d configuration(s) x %d new seed(s) at %d epochs",
        len(configs) // settings.finalist_seeds,
        settings.finalist_seeds,
        settings.max_epochs,
    )
    grid = run_fixed_trials(settings, splits, configs, FINALISTS_DIR, concurrency, project_level())
    return collect_records(grid, "finalist")


def run_seed_baseline(
    settings: SearchSettings, splits: DataSplits, concurrency: int
) -> tuple[list[TrialRecord], dict[str, Any] | None]:
    """--baseline seeds: the seed networks, each with its report's recipe at the search's
    epochs and never stopped early, as trials of the experiment's baseline/ (continued if it
    exists); unless a matching `--space seeds` experiment is in the storage folder, which is
    then the baseline. (records, that baseline)."""
    from tune.runner import _fixed_trial_configs, run_fixed_trials

    if settings.baseline != "seeds":
        return [], None
    if not (settings.storage.local_dir / BASELINE_DIR).exists():
        found = find_seed_baseline(settings)
        if found and not found.get("differences") and found.get("final"):
            logger.info("baseline: the matching seed experiment %s", found["experiment"])
            return [], found
    configs = _fixed_trial_configs(replace(settings, space="seeds"))
    logger.info("baseline: %d seed networks at %d epochs", len(configs), settings.max_epochs)
    grid = run_fixed_trials(settings, splits, configs, BASELINE_DIR, concurrency, project_level())
    return collect_records(grid, "baseline"), None


def retrain_best(
    settings: SearchSettings,
    best: dict[str, Any],
    splits: DataSplits,
    predict: ImageSet | None,
    out: str = "final",
) -> dict[str, Any]:
    """A chosen configuration (the winner, or the best seed network into `baseline_final`)
    trained on train + validation with the --retrain-seeds seeds and tested, with and without
    flip TTA. The seeds run as Ray tasks, each with a trial's resources: on a cluster they
    land on GPU workers like trials, and packed trials mean seeds packed the same way."""
    import ray

    from models import ArchConfig
    from training.config import TrainConfig
    from tune.retrain import concat_sets, retrain_seed_in_storage, summarize_in_storage

    arch = ArchConfig.from_dict(best["arch"])
    cfg = TrainConfig.from_dict(best["train_config"])
    use_gpu = settings.gpus_per_trial > 0
    resources = {"num_cpus": settings.cpus_per_trial, "num_gpus": settings.gpus_per_trial}
    # The same seeds for the winner and the baseline: the comparison is paired by seed.
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
        "out": out,
    }
    logger.info(
        f"retraining {'the best seed network' if out == BASELINE_FINAL else 'the winner'} "
        f"(trial {best['trial_id']}) on {len(train):,} train + validation images: "
        f"{len(seeds)} seed(s) of {cfg.epochs} epochs, then each tested on "
        f"{len(splits.test):,} test images with and without flip TTA; into "
        f"{settings.storage.uri}/{out}"
    )
    started = time.perf_counter()
    pause_at("retrain")
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
    if not use_gpu:
        # The summary tests every seed's network with and without flip TTA, alone after the
        # seeds: on CPUs it may use every core, as the seeds shared them.
        common["threads"] = max(common["threads"], int(ray.cluster_resources().get("CPU", 1)))
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
        f"retrained {best['trial_id']}: test {final['test_acc_mean']:.2%} +- "
        f"{final['test_acc_std']:.2%} over {len(final['test_acc'])} seed(s) "
        f"({'with flip TTA' if cfg.tta_flip else 'without TTA'}, as its recipe tests); wrote "
        f"{settings.storage.uri}/{out}"
    )
    return final


def retrain_baseline(
    settings: SearchSettings, baseline: dict[str, Any] | None, splits: DataSplits
) -> dict[str, Any] | None:
    """The best seed network trained in this experiment, retrained like the winner (same
    seeds, split and epochs) into baseline_final/; the baseline with its retrain in "final".
    A baseline found elsewhere comes with its own retrain."""
    if baseline is None or "final" in baseline or baseline.get("differences"):
        return baseline
    return {**baseline, "final": retrain_best(settings, baseline, splits, None, BASELINE_FINAL)}


def _seed_experiment_summary(exp: Path, table: pd.DataFrame) -> dict[str, Any] | None:
    """A `--space seeds` experiment's winner, with its retrain where it has one."""
    if "score" in table:
        ranked = table.dropna(subset=["score"]).sort_values("score", ascending=False)
        column = "score"
    else:  # written before scores existed
        ranked = table.dropna(subset=["best_val_acc"]).sort_values("best_val_acc", ascending=False)
        column = "best_val_acc"
    if not len(ranked):
        return None
    best_path = exp / "best_config.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else {}
    top = ranked.iloc[0]
    if best.get("trial_id") in set(ranked["trial_id"]):
        top = ranked[ranked["trial_id"] == best["trial_id"]].iloc[0]
    preset = str(top.get("config/preset", top["trial_id"]))
    summary: dict[str, Any] = {
        "experiment": exp.name,
        "trial_id": str(top["trial_id"]),
        "preset": preset,
        "params": int(top["params"]),
        "stages": str(top.get("stages", "")),
        "score": float(top[column]),
        "epochs": int(top["epochs_run"]),
        "seed_val_accs": {
            str(row.get("config/preset", row["trial_id"])): float(row[column])
            for _, row in ranked.iterrows()
        },
    }
    if preset in SEED_MODELS.values():
        summary["preset_params"] = count_params(get_arch(preset))
    if best:
        summary["best"] = best
    if (exp / "final" / "metrics.json").exists():
        summary["final"] = json.loads((exp / "final" / "metrics.json").read_text())
    return summary


def find_seed_baseline(settings: SearchSettings) -> dict[str, Any] | None:
    """The newest `--space seeds` experiment in the same storage folder whose settings match
    this one's (data, subset, split seed, budget, epochs, retrain seeds), summarized: its best
    network, every seed network's score, its retrain. If none matches, the newest one with
    `differences` (what differs) and `command` (how to run a matching one): such a baseline is
    named in the report, never compared. None if there is no seeds experiment."""
    if is_uri(settings.storage_path):
        return None
    ours = _matching_settings(asdict(settings))
    mismatched = None
    for folder in sorted(
        Path(settings.storage_path).glob("*/trials.parquet"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    ):
        exp = folder.parent
        if exp == settings.storage.local_dir:
            continue
        table = pd.read_parquet(folder)
        if "config/space" not in table:
            continue
        if "role" in table:
            table = table[table["role"] == "search"]
        if not len(table) or not (table["config/space"] == "seeds").all():
            continue
        theirs_path = exp / SETTINGS_FILE
        theirs = json.loads(theirs_path.read_text()) if theirs_path.exists() else {}
        differences = setting_differences(ours, theirs)
        final = exp / "final" / "metrics.json"
        if final.exists() and "test_acc_tta" not in json.loads(final.read_text()):
            differences.append(
                "its retrain was tested by an older version, without the accuracy both with "
                "and without flip TTA"
            )
        if not differences:
            return _seed_experiment_summary(exp, table)
        if mismatched is None:
            mismatched = {
                "experiment": exp.name,
                "differences": differences,
                "command": matching_command(ours),
            }
    return mismatched


def importance_trials(table: pd.DataFrame) -> int:
    """How many trials tune.study.param_importances measures over, as the table counts them:
    the completed ones when there are enough, else every one that reported an epoch."""
    if not len(table):
        return 0
    search = table[table["role"] == "search"]
    completed = int((search["status"] == "completed").sum())
    if completed >= MIN_TRIALS_FOR_IMPORTANCES:
        return completed
    return int(((search["epochs_run"] > 0) & (search["status"] != "error")).sum())


def report(settings: SearchSettings, outcome: SearchOutcome, final: dict[str, Any] | None) -> Path:
    """report.md and its plots, written in the experiment and copied to its storage."""
    milestones = asha_milestones(
        settings.grace_period, settings.reduction_factor, settings.max_epochs
    )
    histories = {r.trial_id: r.history for r in outcome.records}
    baseline = outcome.baseline
    if baseline is None and outcome.best:
        baseline = find_seed_baseline(settings)
    path = write_report(
        settings.storage.local_dir,
        outcome.table,
        histories,
        rung_counts(outcome.table[outcome.table["role"] == "search"], milestones)
        if len(outcome.table)
        else rung_counts(outcome.table, milestones),
        outcome.best,
        final,
        baseline,
        outcome.meta,
        outcome.importances,
        outcome.importances_basis,
        finalists=outcome.finalists,
        importances_trials=importance_trials(outcome.table),
        duration=_saved_estimate(settings),
    )
    settings.storage.push(*REPORT_FILES)
    return path


def _saved_estimate(settings: SearchSettings) -> dict[str, Any] | None:
    """The duration estimate the search printed and kept, with what it took (tune.duration)."""
    path = settings.storage.local_dir / "estimate.json"
    return json.loads(path.read_text()) if path.exists() else None
