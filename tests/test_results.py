"""The results table's Pareto frontier and the report's plots, on hand-made tables."""

from __future__ import annotations

import pandas as pd

from tests.searchrun import PNG_MAGIC
from tune.results import _params_unit, pareto_frontier, write_report


def _table(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"trial_id": t, "role": "search", "status": s, "params": p, "best_val_acc": a,
             "score": a if s == "completed" else float("nan"), "stages": "1x8", "epochs_run": 2,
             "train_seconds": 1.0}
            for t, s, p, a in rows
        ]
    )  # fmt: skip


def test_the_frontier_keeps_only_trials_nothing_beats_on_both_counts():
    table = _table(
        [
            ("small", "completed", 100, 0.50),
            ("dominated", "completed", 200, 0.45),  # bigger and worse than "small"
            ("mid", "completed", 300, 0.60),
            ("tie_bigger", "completed", 400, 0.60),  # as good as "mid", but bigger
            ("stopped", "stopped_early", 350, 0.65),  # no score: an unfinished schedule
            ("big", "completed", 900, 0.70),
            ("broken", "failed", 50, 0.99),  # failed trials are not candidates
        ]
    )
    assert list(pareto_frontier(table)["trial_id"]) == ["small", "mid", "big"]


def test_the_report_shows_the_frontier_and_the_importances(tmp_path):
    table = _table([("a", "completed", 100, 0.5), ("b", "completed", 300, 0.7)])
    importances = {"lr": 0.6, "batch_size": 0.3, "se": 0.1}
    settings = {"name": "x", "space": "tiny", "budget": 1000, "max_epochs": 2, "seed": 0}
    write_report(tmp_path, table, {}, [(1, 2), (2, 2)], None, None, None, settings, importances)
    report = (tmp_path / "report.md").read_text()
    assert "![](importances.png)" in report
    assert (tmp_path / "importances.png").read_bytes()[:8] == PNG_MAGIC
    frontier = report.split("The Pareto frontier")[1].split("## ")[0]
    assert "| a | 100 | 1x8 | 50.00% |" in frontier and "| b | 300 | 1x8 | 70.00% |" in frontier

    write_report(tmp_path / "few", table, {}, [], None, None, None, settings, {})
    assert "Too few trials to tell" in (tmp_path / "few" / "report.md").read_text()


def test_the_report_lists_only_files_that_exist_and_explains_the_stage_notation(tmp_path):
    table = _table([("a", "completed", 100, 0.5), ("b", "completed", 300, 0.7)])
    settings = {"name": "x", "space": "tiny", "budget": 1000, "max_epochs": 2, "seed": 0}
    write_report(tmp_path, table, {}, [(2, 2)], None, None, None, settings)
    files = (tmp_path / "report.md").read_text().split("## Files")[1]
    for name in ("trials.parquet", "study.db", "best_config.json", "final/", "predictions.csv"):
        assert name not in files, name  # none of them was written
    assert "blocks x channels" in (tmp_path / "report.md").read_text()

    (tmp_path / "trials.parquet").write_bytes(b"")
    (tmp_path / "best_config.json").write_text("{}")
    final = {"test_acc": [0.5], "test_acc_mean": 0.5, "test_acc_std": 0.0, "epochs": 2}
    write_report(tmp_path, table, {}, [(2, 2)], None, final, None, settings)
    files = (tmp_path / "report.md").read_text().split("## Files")[1]
    assert "trials.parquet" in files and "best_config.json" in files and "final/" in files
    assert "predictions.csv" not in files  # no --predict
    final["predictions"] = str(tmp_path / "final" / "predictions.csv")
    write_report(tmp_path, table, {}, [(2, 2)], None, final, None, settings)
    assert "predictions.csv" in (tmp_path / "report.md").read_text().split("## Files")[1]


def test_the_size_axis_is_in_a_unit_that_gives_a_few_digits():
    assert _params_unit(pd.Series([12_000, 48_000])) == (1e3, "thousands")
    assert _params_unit(pd.Series([300_000, 4_900_000])) == (1e6, "millions")
