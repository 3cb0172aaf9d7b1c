"""The search command: `python -m tune.search --space efficient_resnet --data DIR`.

Read `main` as the table of contents of a search; each step lives in the module it names:
the arguments (tune.cli), the experiment's settings and storage (tune.settings), Ray and
the trials (tune.runner, tune.trainable), and what comes after them: the finalists, the
winner, the retrains and the comparison with the seed baseline (tune.finalize, tune.compare).
"""

from __future__ import annotations

import logging
import sys
import time

from models import BudgetTooSmallError
from training.data import DEFAULT_VAL_SIZE, DataError, load_cifar10, load_images, make_splits
from training.logs import configure_logging, level_from_flags, project_level
from tune.cli import UsageError, build_parser, format_space_list, validate_args
from tune.finalize import (
    collect_records,
    report,
    retrain_baseline,
    retrain_best,
    run_finalists,
    run_seed_baseline,
    summarize_trials,
)
from tune.ray_compat import declared_node_types
from tune.runner import (
    check_resources,
    cluster_gpus,
    run_search,
    start_ray,
    trial_concurrency,
)
from tune.settings import open_storage, resolve_settings, save_settings
from tune.storage import StorageError

logger = logging.getLogger("tune.search")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level_from_flags(args))
    if args.list_spaces:
        print(format_space_list())
        return 0

    # 1. Everything that can be wrong with the inputs fails here, before Ray starts.
    try:
        validate_args(args)
        storage, saved = open_storage(args)
        data = load_cifar10(saved.data if saved else args.data)
        predict_path = saved.predict if saved else args.predict
        predict = load_images(predict_path) if predict_path else None
    except (UsageError, BudgetTooSmallError, DataError, StorageError) as e:
        logger.error(e)
        return 2

    # 2. Ray, and the settings that follow from what it has (a GPU or not).
    nodes = start_ray(args.address, quiet=args.quiet)
    try:
        settings = saved or resolve_settings(args, storage, cluster_gpus(nodes) > 0)
        check_resources(settings, nodes, local=args.address is None)
    except UsageError as e:
        logger.error(e)
        return 2
    if settings.reduced:
        logger.info("reduced run: %s", settings.reduced)
    save_settings(settings)
    # --subset trims what the trials train and validate on; the test split stays whole.
    splits = make_splits(
        data, DEFAULT_VAL_SIZE, settings.subset, seed=settings.seed, subset_test=False
    )
    count = "" if settings.unlimited else f"{settings.num_samples} "
    limit = f" for at most {settings.time_budget_s / 60:.1f} min" if settings.time_budget_s else ""
    logger.info(
        f"search {settings.name}: space {settings.space}, {count}trials of up to "
        f"{settings.max_epochs} epochs{limit}, budget {settings.budget:,} params, "
        f"{len(splits.train):,} train / {len(splits.val):,} val images; folder {storage.uri}"
    )

    # 3. The trials: the seed baselines with --baseline seeds, the search, the finalists.
    started = time.perf_counter()
    declared = declared_node_types() if args.address else None
    concurrency = trial_concurrency(settings, nodes, args.max_concurrent_trials, declared)
    baseline_records, baseline = run_seed_baseline(settings, splits, concurrency)
    search_started = time.perf_counter()
    records = collect_records(run_search(settings, splits, concurrency, project_level()))
    records += run_finalists(settings, splits, records, concurrency)
    search_seconds = time.perf_counter() - search_started

    # 4. The results table, the winner, its retrain and the baseline's, and the report.
    outcome = summarize_trials(
        records + baseline_records, settings, search_seconds, cluster_gpus(nodes), baseline
    )
    if outcome.best is None:
        report(settings, outcome, None)
        logger.error(
            "no trial trained every epoch, so there is no winner; see the status and error "
            "columns of trials.parquet (and the trials' error.txt), or give the search more "
            "time or trials"
        )
        return 1
    final = None
    if not args.skip_retrain:
        final = retrain_best(settings, outcome.best, splits, predict)
        outcome.baseline = retrain_baseline(settings, outcome.baseline, splits)
    logger.info("all of it took %.1f min", (time.perf_counter() - started) / 60)
    report(settings, outcome, final)
    logger.info(f"report: {storage.uri}/report.md\nTensorBoard: tensorboard --logdir {storage.uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
