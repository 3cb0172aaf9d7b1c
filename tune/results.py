"""The search's results as a table, and a report a person would rather look at than read.

Works on plain records (no Ray), so it can be tested and re-run on a finished experiment.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# Figures drawn on a Figure of their own, not through pyplot: files only, with no display on
# servers or in CI, and without switching the process's backend (a notebook's inline backend
# stays as it was).
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from training.artifacts import atomic_write, code_version, write_text
from tune.cli import beside_interpreter
from tune.compare import final_value, score_epochs, welch

# What the seed reports claimed (../shared/seeds/README.md), selected on the CIFAR-10 test
# batch and trained on the lossless original: shown for context, not as a measured baseline.
SEED_REPORTED_ACC = {
    "preact_mish_transformer": 0.9560,
    "resnet_stem_se_4322": 0.9695,
    "se_mish_resnet": 0.9480,
    "efficient_resnet": 0.9708,
    "resnet_dropout_3x4": 0.9310,
}


# What "the seed networks" are, for a reader who has not met the seed reports.
SEED_NOTE = (
    "The seed networks are the ResNets of the five seed reports this project starts from "
    "(reports 000 to 004: earlier work on CIFAR-10 ResNets under 5 million parameters, each "
    "with its own network and training recipe; README.md lists them). They are the "
    "baseline a search must beat."
)

# How a network's stages are written in tables and in trials.parquet's `stages` column.
STAGES_NOTE = (
    "Stages are written blocks x channels, one per stage: `4x64 4x128 3x256` is 4 blocks of "
    "64 channels, then 4 blocks of 128, then 3 of 256."
)


@dataclass
class TrialRecord:
    trial_id: str
    config: dict[str, Any]  # the trial's Ray config: sampled parameters plus constants
    history: pd.DataFrame  # one row per reported epoch
    error: str | None = None
    path: str = ""
    arch: dict[str, Any] = field(default_factory=dict)  # resolved ArchConfig as a dict
    role: str = "search"  # search, finalist (a re-run of a top trial) or baseline (a seed)


def _stages_text(arch: dict[str, Any]) -> str:
    return " ".join(f"{s['blocks']}x{s['channels']}" for s in arch.get("stages", ()))


def epoch_rows(history: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch rows of a trial's history, without a final failure row."""
    if "failure" in history:
        return history[history["failure"].isna()]
    return history


def _trial_times(path: str, history: pd.DataFrame) -> dict[str, float]:
    times: dict[str, Any] = {}
    file = Path(path) / "trial_times.json" if path and "://" not in path else None
    if file is not None and file.is_file():
        with contextlib.suppress(ValueError):
            times = json.loads(file.read_text())
    started = times.get("started_at")
    if started is None and "started_at" in history and history["started_at"].notna().any():
        started = history["started_at"].dropna().iloc[0]
    return {
        "started_at": float(started) if started is not None else math.nan,
        "ended_at": float(times.get("ended_at", math.nan)),
    }


def trials_table(records: list[TrialRecord], max_epochs: int) -> pd.DataFrame:
    """One row per trial: role, status, parameter count, accuracies, the score of a trial
    that trained every epoch (what Optuna was told and what ranks the candidates for the
    winner), epochs, time, config. Ranked: scored trials first, best score first."""
    rows = []
    for r in records:
        h = r.history
        failure = ""
        if "failure" in h and h["failure"].notna().any():
            # A trial that failed for good (non-finite loss, out of memory) reports its reason
            # in a last row that is not an epoch.
            failure = str(h["failure"].dropna().iloc[-1])
        h = every_pass = epoch_rows(h)
        if "epoch" in h:
            # An epoch trained twice (after a resume from a checkpoint) is its latest row: the
            # run that continued, whose value the study keeps too (tune.study.record_epoch).
            h = h.drop_duplicates("epoch", keep="last").sort_values("epoch", kind="stable")
        has_val = "val_acc" in h and len(h)
        epochs = int(h["epoch"].max()) if "epoch" in h and len(h) else 0
        if failure:
            status = "failed"
        elif r.error:
            status = "error"
        elif epochs >= max_epochs:
            status = "completed"
        elif epochs == 0:
            status = "not_run"  # e.g. still waiting for resources when the time budget ended
        else:
            status = "stopped_early"
        score = math.nan
        if status == "completed" and has_val:
            score = final_value(h.set_index("epoch")["val_acc"].to_dict(), max_epochs)
        row: dict[str, Any] = {
            "trial_id": r.trial_id,
            "role": r.role,
            "status": status,
            "error": failure or r.error or "",
            "params": int(r.config.get("params") or (h["params"].iloc[-1] if len(h) else 0)),
            "width_scale": float(r.config.get("width_scale", 1.0)),
            "seed": int(r.config.get("seed", 0)),
            "score": score,
            "final_val_acc": float(h["val_acc"].iloc[-1]) if has_val else math.nan,
            "best_val_acc": float(h["val_acc"].max()) if has_val else math.nan,
            "best_epoch": int(h["epoch"].iloc[int(h["val_acc"].values.argmax())]) if has_val else 0,
            "epochs_run": epochs,
            "train_seconds": float(h["train_seconds"].iloc[-1])
            if "train_seconds" in h and len(h)
            else 0.0,
            # Wall-clock seconds since the epoch: when the trial's function began and returned
            # (its trial_times.json; NaN where the trial's folder is not on this machine).
            **_trial_times(r.path, h),
            "images_per_sec": float(h["images_per_sec"].mean())
            if "images_per_sec" in h and len(h)
            else 0.0,
            "stages": _stages_text(r.arch),
            # Ray node ids the trial ran on, in order (more than one after a node was lost).
            "nodes": ",".join(dict.fromkeys(every_pass["node_id"].dropna()))
            if "node_id" in every_pass
            else "",
            "path": r.path,
            # The precision the trial really trained at ("auto" resolved on its device).
            "precision": str(h["precision"].dropna().iloc[-1])
            if "precision" in h and h["precision"].notna().any()
            else "",
            # The code that trained the trial (older trials did not report it).
            "code_version": str(h["code_version"].dropna().iloc[-1])
            if "code_version" in h and h["code_version"].notna().any()
            else "",
        }
        for key, value in sorted(r.config.items()):
            row[f"config/{key}"] = (
                value if isinstance(value, bool | int | float | str) else json.dumps(value)
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        # Ties (common on small validation sets) go to the earlier trial, so the same results
        # always name the same best trial: a resumed retrain continues the one it began.
        keys = ["score", "best_val_acc", "config/trial_number", "trial_id"]
        keys = [k for k in keys if k in table]
        table = table.sort_values(
            keys,
            ascending=[False, False, True, True][: len(keys)],
            na_position="last",
            kind="stable",
        )
    return table.reset_index(drop=True)


def write_parquet(path: Path, table: pd.DataFrame, metadata: dict[str, Any]) -> Path:
    """The table with the experiment's settings in the file's schema metadata."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"resnet_tune"] = json.dumps(metadata, default=str).encode()
    arrow = arrow.replace_schema_metadata(meta)
    return atomic_write(path, lambda tmp: pq.write_table(arrow, tmp))


def asha_milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    milestones, m = [], grace_period
    while m < max_t:
        milestones.append(m)
        m *= reduction_factor
    return [*milestones, max_t]


def rung_counts(table: pd.DataFrame, milestones: list[int]) -> list[tuple[int, int]]:
    """(milestone epoch, trials that trained at least that long) for each ASHA rung."""
    epochs = table["epochs_run"] if len(table) else pd.Series(dtype=int)
    return [(m, int((epochs >= m).sum())) for m in milestones]


def pareto_frontier(table: pd.DataFrame) -> pd.DataFrame:
    """The trials that trained every epoch that no other such trial beats on both counts
    (fewer or equal parameters and a higher or equal score, one of them strictly), smallest
    first. Only scores compare: a trial ASHA stopped has none (its accuracy is of a shorter,
    unfinished schedule), and a trial's best epoch is the luckiest of its noisy evaluations
    (and, at a rung, of a decay branch's)."""
    scored = table[table["status"] == "completed"].dropna(subset=["score"])
    scored = scored.sort_values(["params", "score"], ascending=[True, False], kind="stable")
    keep, best = [], -1.0
    for index, score in scored["score"].items():
        if score > best:
            keep.append(index)
            best = score
    return scored.loc[keep]


def _params_unit(params: pd.Series) -> tuple[float, str]:
    """(divisor, name) that writes these parameter counts with a few digits."""
    return (1e6, "millions") if params.max() >= 1e6 else (1e3, "thousands")


def _unscored_note(table: pd.DataFrame) -> str:
    """Which of the trials a plot of scores leaves out, and why."""
    counts = table["status"].value_counts()
    parts = []
    if counts.get("stopped_early", 0):
        parts.append(f"{counts['stopped_early']} stopped early by ASHA (unfinished schedules)")
    failed = counts.get("failed", 0) + counts.get("error", 0)
    if failed:
        parts.append(f"{failed} failed")
    if counts.get("not_run", 0):
        parts.append(f"{counts['not_run']} never ran")
    return f"Not shown, having no score: {', '.join(parts)}." if parts else ""


def params_vs_acc_figure(table: pd.DataFrame, max_epochs: int) -> Any:
    """Each trial that trained every epoch: its score against its size, with the Pareto
    frontier."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    scored = table[table["status"] == "completed"].dropna(subset=["score"])
    unit, unit_name = _params_unit(table["params"])
    frontier = pareto_frontier(table)
    if len(frontier):
        ax.step(
            frontier["params"] / unit,
            frontier["score"] * 100,
            where="post",
            color="0.4",
            linewidth=1,
            label="Pareto frontier",
        )
    if len(scored):
        ax.scatter(
            scored["params"] / unit, scored["score"] * 100, marker="o", label="trained every epoch"
        )
    ax.set_xlabel(f"trainable parameters ({unit_name})")
    k = score_epochs(max_epochs)
    ax.set_ylabel(f"score: mean validation accuracy of the last {k} epoch(s) (%)")
    ax.set_title(f"Accuracy against size: the {len(scored)} trial(s) that trained every epoch")
    note = _unscored_note(table)
    if note:
        fig.text(0.01, -0.02, note, fontsize="small", va="top")
    ax.grid(alpha=0.3)
    if len(scored):
        ax.legend()
    return fig


def main_run_accuracy(history: pd.DataFrame) -> pd.Series:
    """A trial's main-run validation accuracy at each reported epoch: `stable_val_acc` where
    the epoch reported it (every epoch now; only at rungs in older trials), else `val_acc`,
    which is the main run's at every epoch without a decay branch."""
    if "stable_val_acc" not in history:
        return history["val_acc"]
    return history["stable_val_acc"].fillna(history["val_acc"])


def curves_figure(histories: dict[str, pd.DataFrame], table: pd.DataFrame) -> Any:
    """The five best trials' validation accuracy per epoch: the main run as a line, and at
    each rung the decay branch's accuracy (what ASHA judged there) as a point of its own."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    branches = False
    for trial_id in table["trial_id"].head(5):
        h = histories.get(trial_id)
        if h is None or "val_acc" not in h:
            continue
        h = epoch_rows(h).drop_duplicates("epoch", keep="last")
        main = main_run_accuracy(h)
        [line] = ax.plot(h["epoch"], main * 100, marker=".", label=trial_id)
        branch = h[h["val_acc"].ne(main) & h["val_acc"].notna()]
        if len(branch):
            branches = True
            ax.scatter(
                branch["epoch"],
                branch["val_acc"] * 100,
                marker="^",
                color=line.get_color(),
                zorder=3,
                gid=f"branch:{trial_id}",
            )
    if branches:
        ax.scatter([], [], marker="^", color="0.4", label="decay branch at a rung (ASHA's value)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("The five best trials: validation accuracy of each main run")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


# PED-ANOVA (Optuna) compares the best tenth of the trials with all of them; Optuna's
# documentation advises at least 5 trials in that best tenth.
IMPORTANCE_TOP_SHARE = 0.1
IMPORTANCE_MIN_TOP = 5


def importances_hint(trials: int | None) -> str:
    """A warning when `trials` are too few for PED-ANOVA's importances to rank anything;
    empty when they are enough or unknown."""
    if trials is None:
        return ""

    def top_of(n: int) -> int:  # as Optuna's PED-ANOVA takes its best tenth
        return math.ceil(IMPORTANCE_TOP_SHARE * n)

    top = top_of(trials)
    if top >= IMPORTANCE_MIN_TOP:
        return ""
    enough = next(n for n in range(trials, 10_000) if top_of(n) >= IMPORTANCE_MIN_TOP)
    return (
        f"With {trials} trials this is a hint, not a ranking: PED-ANOVA compares the best "
        f"tenth of the trials (here {top}) with all of them, and Optuna advises at least "
        f"{IMPORTANCE_MIN_TOP} in that tenth, that is at least {enough} trials."
    )


def importances_figure(importances: dict[str, float], basis: str, trials: int | None) -> Any:
    top = sorted(importances, key=importances.get, reverse=True)[:15]
    names = top[::-1]  # most important on top
    fig = Figure(figsize=(7, 0.3 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance for validation accuracy (PED-ANOVA, all parameters sum to 1)")
    title = f"The {len(names)} parameters that mattered most, over {basis}"
    if importances_hint(trials):
        title += f"\n(only {trials} trials: a hint, not a ranking)"
    ax.set_title(title)
    return fig


def _plot_rungs(rungs: list[tuple[int, int]], path: Path) -> None:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    labels = [f"epoch {m}" for m, _ in rungs]
    counts = [n for _, n in rungs]
    ax.bar(labels, counts)
    for i, n in enumerate(counts):
        ax.annotate(str(n), (i, n), ha="center", va="bottom")
    ax.set_ylabel("trials")
    ax.set_title("Trials that reached each ASHA rung")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def _cell(column: str, value: Any) -> str:
    if column.endswith("_acc") or column == "score":
        return "" if value != value else f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.to_dict("records"):
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in cols) + " |")
    return "\n".join(lines)


def precision_sentence(requested: str, table: pd.DataFrame, final: dict[str, Any] | None) -> str:
    """What precision was asked for and what the trials and the retrain really trained at."""
    used = table["precision"][table["precision"] != ""] if "precision" in table else []
    counts = pd.Series(used).value_counts().to_dict() if len(used) else {}
    trials = ", ".join(f"{p} ({n} trial{'s' * (n != 1)})" for p, n in counts.items())
    text = f"**Precision**: `--precision {requested}`; the trials trained at {trials or 'none yet'}"
    if final and final.get("precision"):
        text += f", the retrain at {final['precision']}"
    return text + "."


def write_report(
    exp_dir: Path,
    table: pd.DataFrame,
    histories: dict[str, pd.DataFrame],
    rungs: list[tuple[int, int]],
    best: dict[str, Any] | None,
    final: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    settings: dict[str, Any],
    importances: dict[str, float] | None = None,
    importances_basis: str = "the completed trials",
    finalists: pd.DataFrame | None = None,
    importances_trials: int | None = None,
    duration: dict[str, Any] | None = None,
) -> Path:
    """report.md with its plots beside it. `table` may hold the finalists' re-runs and the
    seed baselines too (its `role`); the sections about the search show its own trials.
    `importances_trials`: how many trials the importances were measured over."""
    exp_dir = Path(exp_dir)
    if "role" in table:
        table = table[table["role"] == "search"]
    max_epochs = int(settings.get("max_epochs") or 1)
    if len(table):
        _save(params_vs_acc_figure(table, max_epochs), exp_dir / "params_vs_acc.png")
        _save(curves_figure(histories, table), exp_dir / "curves.png")
    _plot_rungs(rungs, exp_dir / "rungs.png")
    if importances:
        figure = importances_figure(importances, importances_basis, importances_trials)
        _save(figure, exp_dir / "importances.png")

    counts = table["status"].value_counts().to_dict() if len(table) else {}
    lines = [
        f"# Search `{settings.get('name', exp_dir.name)}`: space `{settings.get('space')}`",
        "",
        f"{len(table)} trials ({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'}); "
        f"budget {settings.get('budget', 0):,} parameters; up to {settings.get('max_epochs')} "
        f"epochs per trial; seed {settings.get('seed')}; code {code_version()}.",
        "",
    ]
    if settings.get("reduced"):
        lines += [f"**Reduced run** (no GPU): {_sentence(settings['reduced'])}", ""]
    lines += [precision_sentence(settings.get("precision", "auto"), table, final), ""]
    k = score_epochs(max_epochs)
    score_note = (
        f"A trial's score is its validation accuracy averaged over its last {k} epoch(s), "
        "where the learning rate has decayed; only trials that trained every epoch have one."
    )
    if len(table):
        lines += ["## Accuracy against size", "", "![](params_vs_acc.png)", ""]
        frontier = pareto_frontier(table)[["trial_id", "params", "stages", "score"]]
        lines += [
            f"{score_note} The Pareto frontier: the trials that no other trial beats with "
            "both fewer parameters and a higher score. " + STAGES_NOTE,
            "",
        ]
        if len(frontier):
            lines += [_markdown_table(frontier), ""]
        else:
            lines += ["No trial trained every epoch, so there is no frontier yet.", ""]
        lines += [
            "## Learning curves",
            "",
            "![](curves.png)",
            "",
            "Lines: each main run's validation accuracy per epoch. Triangles: at an ASHA rung, "
            "the accuracy of a short decay branch (a copy of the weights trained on with the "
            "learning rate falling to 0), which is what ASHA compares there: what the run "
            "would reach if its schedule ended at that epoch. The main run continues "
            "unchanged.",
            "",
        ]
    if importances:
        lines += [
            "## Which parameters mattered",
            "",
            f"Optuna's PED-ANOVA importances over {importances_basis}: how much of the "
            "difference between the better and the other trials each parameter explains.",
        ]
        hint = importances_hint(importances_trials)
        if hint:
            lines[-1] += f" **{hint}**"
        lines += ["", "![](importances.png)", ""]
    elif importances is not None:
        lines += [
            "## Which parameters mattered",
            "",
            "Too few trials to tell (fewer than 5 that reported an epoch, or no parameter "
            "common to them); run more trials.",
            "",
        ]
    lines += ["## ASHA rungs", "", "![](rungs.png)", ""]
    lines += ["| rung (epoch) | trials reaching it |", "|---|---|"]
    lines += [f"| {m} | {n} |" for m, n in rungs]
    lines.append("")
    if len(table):
        top = table.head(10)[
            ["trial_id", "status", "params", "stages", "score", "epochs_run", "train_seconds"]
        ]
        lines += [
            "## Best trials",
            "",
            "Ranked by score; the trials stopped early, which have none, follow. "
            "`train_seconds`: the trial's time training and evaluating.",
            "",
            _markdown_table(top),
            "",
        ]
    if best:
        lines += ["## The winner", ""]
        lines += _winner_lines(table, finalists, settings)
        lines += ["## The winner against the best seed network", "", SEED_NOTE, ""]
        lines += _comparison_lines(best, final, baseline, settings)
    if final:
        lines += ["## The winner retrained on train + validation", "", *_retrain_lines(final)]
    if duration:
        lines += ["## Duration", "", duration_sentence(duration), ""]
    lines += ["## Files", "", *_file_lines(exp_dir, final), ""]
    return write_text(exp_dir / "report.md", "\n".join(lines))


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


TTA_NOTE = (
    "flip test-time augmentation (TTA): each test image is predicted as it is and mirrored, "
    "and the two predictions averaged"
)


def _accuracies(final: dict[str, Any], key: str) -> str:
    per_seed = ", ".join(f"{a:.2%}" for a in final[key])
    return f"mean {final[key + '_mean']:.2%} ± {final[key + '_std']:.2%} (per seed: {per_seed})"


def duration_sentence(duration: dict[str, Any]) -> str:
    """The estimate printed from the first epochs (tune.duration) beside what it took."""
    estimated = duration["estimated_s"]
    text = (
        f"Estimated from the first {len(duration.get('epochs_measured', []))} epochs: "
        f"{estimated / 60:.1f} min for the whole command"
    )
    actual = duration.get("actual_s")
    if actual is None:
        return text + "; the command has not finished."
    if duration.get("resumed"):
        return text + f"; this command (a resumed search) took {actual / 60:.1f} min."
    text += f"; it took {actual / 60:.1f} min ({(estimated - actual) / actual:+.0%} off)."
    update = duration.get("update")
    if update:
        again = update["estimated_s"]
        text += (
            f" Estimated again {update['at_s'] / 60:.1f} min in, at the search's own pace: "
            f"{again / 60:.1f} min ({(again - actual) / actual:+.0%} off)."
        )
    return text + f" The estimate as first printed: {duration.get('text', '')}."


def _retrain_lines(final: dict[str, Any]) -> list[str]:
    """What the retrain measured, each number saying whether it is with flip TTA."""
    seeds, epochs = len(final["test_acc"]), final["epochs"]
    images = final.get("test_images")
    lines = [
        f"The winning configuration trained again from scratch on the training and validation "
        f"images together, with {seeds} seed(s) of {epochs} epochs each, then tested on the "
        + (f"{images:,} " if images else "")
        + "test images, which nothing in the search saw. Mean ± standard deviation over the "
        f"seeds; {TTA_NOTE}.",
        "",
    ]
    if "test_acc_tta" in final and "test_acc_plain" in final:
        lines += [
            f"- with flip TTA: {_accuracies(final, 'test_acc_tta')}",
            f"- without TTA: {_accuracies(final, 'test_acc_plain')}",
        ]
    else:  # tested by an older version: only as its recipe tests
        tta = (final.get("train_config") or {}).get("tta_flip")
        how = {True: "with flip TTA", False: "without TTA"}.get(tta, "as the recipe tests")
        lines.append(f"- {how}: {_accuracies(final, 'test_acc')}")
    if final.get("ensemble_test_acc") is not None:
        tta = (final.get("train_config") or {}).get("tta_flip")
        how = {True: " (with flip TTA)", False: " (without TTA)"}.get(tta, "")
        lines.append(
            f"- the {seeds} seeds' predictions averaged{how}: {final['ensemble_test_acc']:.2%}"
        )
    return [*lines, ""]


def _file_lines(exp_dir: Path, final: dict[str, Any] | None) -> list[str]:
    """What the experiment folder holds, as far as it exists; the commands that open it,
    written to be pasted into the shell that ran the search (the tools beside its Python)."""
    lines = []
    db = exp_dir / "study.db"
    if (exp_dir / "trials.parquet").exists():
        lines.append("- `trials.parquet`: one row per trial (pandas.read_parquet)")
    if (exp_dir / "study.db").exists():
        dashboard = shlex.join([beside_interpreter("optuna-dashboard"), f"sqlite:///{db}"])
        lines.append(
            f"- `study.db`: the Optuna study (`{dashboard}`, "
            f"or `optuna.load_study(study_name={exp_dir.name!r}, storage='sqlite:///{db}')`)"
        )
    if (exp_dir / "best_config.json").exists():
        lines.append("- `best_config.json`: the chosen configuration")
    if final:
        retrained = "- `final/`: each retrain seed's `seed_*/checkpoint.pt`, `metrics.json`"
        if final.get("predictions"):
            retrained += ", `predictions.csv`"
        lines.append(retrained)
    for folder, what in (
        ("finalists", "the finalists' re-runs (Ray trials, role `finalist`)"),
        ("baseline", "the seed networks trained here (Ray trials, role `baseline`)"),
        ("baseline_final", "the best seed network retrained like the winner: metrics.json"),
    ):
        if (exp_dir / folder).exists():
            lines.append(f"- `{folder}/`: {what}")
    tensorboard = shlex.join([beside_interpreter("tensorboard"), "--logdir", str(exp_dir)])
    lines.append(f"- TensorBoard: `{tensorboard}`")
    return lines


def gpu_minutes(best: dict[str, Any] | None, final: dict[str, Any] | None) -> float | None:
    """GPU-minutes an experiment held: the search's and the retrain's wall time times the
    cluster's GPUs (the GPUs were the search's alone while it ran)."""
    if not best or not best.get("cluster_gpus"):
        return None
    seconds = best.get("search_seconds", 0.0) + (final or {}).get("wall_seconds", 0.0)
    return seconds * best["cluster_gpus"] / 60


def _minutes_text(minutes: float | None) -> str:
    return f"{minutes:.1f}" if minutes is not None else "no GPU"


def _winner_lines(
    table: pd.DataFrame, finalists: pd.DataFrame | None, settings: dict[str, Any]
) -> list[str]:
    """How the winner was chosen, every finalist's mean ± std, and how the order changed."""
    max_epochs = int(settings.get("max_epochs") or 1)
    k = score_epochs(max_epochs)
    complete = int((table["status"] == "completed").sum()) if len(table) else 0
    stopped = int((table["status"] == "stopped_early").sum()) if len(table) else 0
    lines = [
        f"Candidates are the {complete} trial(s) that trained all {max_epochs} epochs ({stopped} "
        "stopped early by ASHA are not: their accuracy is of an unfinished schedule), ranked "
        f"by their score, the mean validation accuracy of their last {k} epoch(s): the value "
        "Optuna was told (the `score` column of trials.parquet).",
    ]
    if finalists is None or not len(finalists):
        return [*lines, ""]
    reruns = int(settings.get("finalist_seeds") or 0) if int(settings.get("finalists") or 0) else 0
    if not reruns:
        return [*lines, ""]
    lines[-1] += (
        f" The top {len(finalists)} were re-run with {reruns} new seed(s) each at the full "
        "epochs (role `finalist` in trials.parquet); the winner has the best mean score over "
        "its re-runs alone. The search run each was chosen for is shown but not counted: "
        "chosen for being among the highest of many noisy runs, it overstates its "
        "configuration (the winner's curse)."
    )
    lines += [
        "",
        "| rank | search rank | trial | network | parameters | search score (not counted) "
        "| re-runs | re-run score, mean ± std | each re-run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in finalists.to_dict("records"):
        mean = "none"
        if row["runs"]:
            mean = f"{row['val_mean']:.2%}"
        if row["runs"] > 1:
            mean += f" ± {row['val_std']:.2%}"
        lines.append(
            f"| {row['rank']} | {row['search_rank']} | {row['trial_id']} | {row['stages']} | "
            f"{row['params']:,} | {row['search_score']:.2%} | {row['runs']} | {mean} | "
            + ", ".join(f"{x:.2%}" for x in row["scores"])
            + " |"
        )
    first = finalists.iloc[0]
    if int(first["search_rank"]) != 1:
        top = finalists[finalists["search_rank"] == 1].iloc[0]
        lines += [
            "",
            f"The re-runs changed the order: trial {first['trial_id']} (rank "
            f"{int(first['search_rank'])} in the search) wins over trial {top['trial_id']}, "
            f"the search's best single run (now rank {int(top['rank'])}).",
        ]
    elif len(finalists) > 1:
        lines += ["", "The re-runs kept the search's best trial first."]
    return [*lines, ""]


def _sides_text(metrics: dict[str, Any] | None, key: str) -> str:
    if not metrics or key not in metrics:
        return "not retrained"
    accs = metrics[key]
    return f"{metrics[key + '_mean']:.2%} ± {metrics[key + '_std']:.2%} ({len(accs)})"


def _comparison_lines(
    best: dict[str, Any],
    final: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    settings: dict[str, Any] | None = None,
) -> list[str]:
    """The winner beside the best seed network, tested identically (same split, epochs, data
    and retrain seeds, each with and without flip TTA), with Welch's interval, p-value and
    sentence; or why there is no comparison."""
    settings = settings or {}
    epochs = (final or {}).get("epochs", settings.get("retrain_epochs", ""))
    header = [
        "| | network | parameters | validation score | test, no TTA: mean ± std (seeds) "
        "| test, flip TTA: mean ± std (seeds) | epochs | GPU-minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    score = best.get("val_mean", best.get("score", best.get("best_val_acc", math.nan)))
    rows = [
        f"| the winner (trial {best['trial_id']}) | {best.get('stages', '')} | "
        f"{best['params']:,} | {score:.2%} | {_sides_text(final, 'test_acc_plain')} | "
        f"{_sides_text(final, 'test_acc_tta')} | {epochs} | "
        f"{_minutes_text(gpu_minutes(best, final))} |",
    ]
    if baseline is None:
        return [
            *header,
            *rows,
            "",
            "No seed baseline: run this search with `--baseline seeds` (or a matching "
            "`--space seeds` experiment in the same storage folder) to compare. For "
            "context only, the test accuracy each seed report claimed (after hundreds of "
            "epochs on the original images, its best epoch picked on the test set, so "
            "optimistic): "
            + ", ".join(f"`{k}` {v:.2%}" for k, v in SEED_REPORTED_ACC.items())
            + ".",
            "",
        ]
    if baseline.get("differences"):
        return [
            *header,
            *rows,
            "",
            f"The seed experiment `{baseline['experiment']}` is **not compared**: its settings "
            "differ from this search's ("
            + "; ".join(baseline["differences"])
            + "). Run a matching one with `"
            + baseline["command"]
            + "`, or run this search with `--baseline seeds`.",
            "",
        ]
    b_final = baseline.get("final")
    rows.append(
        f"| best seed network (`{baseline['preset']}`) | {baseline.get('stages', '')} | "
        f"{baseline['params']:,} | {baseline['score']:.2%} | "
        f"{_sides_text(b_final, 'test_acc_plain')} | {_sides_text(b_final, 'test_acc_tta')} | "
        f"{(b_final or {}).get('epochs', baseline['epochs'])} | "
        f"{_minutes_text(gpu_minutes(baseline.get('best'), b_final))} |"
    )
    lines = [*header, *rows, ""]
    preset_params = baseline.get("preset_params")
    if preset_params and baseline["params"] < preset_params:
        lines += [
            f"The seed networks are scaled in width to this run's budget of "
            f"{settings.get('budget', 0):,} parameters, keeping their shapes and recipes "
            f"(`{baseline['preset']}` has {preset_params:,} at its own widths, "
            f"{baseline['params']:,} here).",
            "",
        ]
    lines += [
        "Both sides are retrained on train + validation with the same seeds, split, epochs "
        "and data, and tested on the same test images both without and with flip test-time "
        "augmentation (the seed recipes train without it, the search's with it). Difference "
        "of means, winner minus seed network, with Welch's 95% interval. With and without TTA "
        "are two tests of the same networks, each at 5%: either one alone is wrong at most "
        "5% of the time, but the chance that at least one of the two finds a difference where "
        "there is none is up to 10%.",
        "",
    ]
    for label, key in (("flip TTA", "test_acc_tta"), ("no TTA", "test_acc_plain")):
        if not final or not b_final or key not in final or key not in b_final:
            lines.append(f"- {label}: no comparison, a side was not retrained.")
            continue
        comparison = welch(final[key], b_final[key])
        if comparison is None:
            diff = (final[key + "_mean"] - b_final[key + "_mean"]) * 100
            lines.append(
                f"- {label}: {diff:+.2f} points; an interval needs at least 2 retrain seeds "
                "per side (`--retrain-seeds`)."
            )
        else:
            lines.append(f"- {label}: {comparison.sentence()}")
    lines += [
        "",
        f"Every seed network's validation score in `{baseline['experiment']}` (each "
        "report's recipe at the same epochs, none stopped early): "
        + ", ".join(f"`{k}` {v:.2%}" for k, v in baseline["seed_val_accs"].items())
        + ".",
        "",
    ]
    return lines
