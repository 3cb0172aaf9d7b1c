"""The search command: `python -m tune.search --space efficient_resnet --data DIR`.

Read `main` and `search` as the table of contents of a search; each step lives in the module
it names: the arguments (tune.cli), the experiment's settings and storage (tune.settings),
Ray and the trials (tune.runner, tune.trainable), and what comes after them: the finalists,
the winner, the retrains and the comparison with the seed baseline (tune.finalize,
tune.compare). The arguments are parsed and checked before anything imports torch or Ray, so
`--help`, a mistyped option, an unknown space or a missing data path answer at once. Ctrl-C or
SIGTERM stops a search cleanly (tune.interrupt). Every command line it prints names the Python
that runs it, so it works pasted into the same shell.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time

from training.logs import configure_logging, level_from_flags, project_level
from tune.cli import (
    UsageError,
    beside_interpreter,
    build_parser,
    check_budget,
    command_line,
    format_space_list,
    validate_args,
)
from tune.interrupt import SearchInterrupted, StopSignals
from tune.state_files import DamagedExperiment

logger = logging.getLogger("tune.search")


def resume_command(argv: list[str], name: str) -> str:
    """The command line that continues the experiment `name`: the same one, naming it (its
    saved settings then win over the options; the others, like --skip-retrain, still count),
    run by the Python that ran this one."""
    args = list(argv)
    if "--name" not in args and not any(a.startswith("--name=") for a in args):
        args += ["--name", name]
    return command_line("tune.search", *args)


def carry_on_command(argv: list[str], damaged: DamagedExperiment) -> str:
    """The command that starts a new experiment in place of a damaged one: the same options
    without --name/--resume, warm-started from it where its study is whole."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--name":
            skip = True
        elif arg != "--resume" and not arg.startswith("--name="):
            args.append(arg)
    name = damaged.root.name
    if damaged.can_warm_start:
        args += ["--warm-start", name]
    return command_line("tune.search", *args, "--name", f"{name}-continued")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    configure_logging(level_from_flags(args))
    if args.list_spaces:
        print(format_space_list())
        return 0
    stop = StopSignals()
    stop.install()
    started: list[str] = []  # the experiment's name, once it exists
    try:
        return search(args, stop, started, argv)
    except SearchInterrupted:
        pass
    if started:
        logger.error("stopped by %s; resume with: %s", stop.name, resume_command(argv, started[0]))
    else:
        logger.error("stopped by %s before the search started; nothing to resume", stop.name)
    return 128 + (stop.received or 2)


def search(
    args: argparse.Namespace, stop: StopSignals, started: list[str], argv: list[str] | None = None
) -> int:
    command_started = time.perf_counter()
    # 1. Everything that can be wrong with the inputs fails here, before Ray starts; first
    # what needs no torch, so that a typo does not wait seconds for its import.
    try:
        validate_args(args)
    except UsageError as e:
        logger.error(e)
        return 2
    # Then the budget, which needs torch (it counts networks), before the other imports.
    from models import BudgetTooSmallError

    try:
        check_budget(args)
    except BudgetTooSmallError as e:
        logger.error(e)
        return 2
    # A GPU the installed torch cannot run stops the search here, before Ray starts.
    from training.precision import UnsupportedGpuError, check_visible_gpus

    if args.address is None and args.gpus_per_trial != 0:
        try:
            check_visible_gpus()
        except UnsupportedGpuError as e:
            logger.error(e)
            return 2

    from training.data import DEFAULT_VAL_SIZE, DataError, load_cifar10, load_images, make_splits
    from tune.faults import pause_at
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

    try:
        storage, saved = open_storage(args)
        if args.warm_start and saved is None and args.address is None:
            # --warm-start refused before Ray starts: checked against the settings the local
            # Ray will give (its GPUs are this machine's); on a cluster, once it is joined.
            import torch

            resolve_settings(args, storage, have_gpu=torch.cuda.is_available())
    except DamagedExperiment as e:
        logger.error(e.message(carry_on_command(sys.argv[1:] if argv is None else argv, e)))
        return 2
    except (UsageError, StorageError) as e:
        logger.error(e)
        return 2
    try:
        data_path = saved.data if saved else args.data
        reading = time.perf_counter()
        logger.info(
            "reading CIFAR-10 from %s", data_path or "torchvision's download (no --data given)"
        )
        data = load_cifar10(data_path)
        logger.info(
            "read %s training and %s test images in %.0f s",
            f"{len(data.train):,}",
            f"{len(data.test):,}",
            time.perf_counter() - reading,
        )
        predict_path = saved.predict if saved else args.predict
        predict = load_images(predict_path) if predict_path else None
    except (UsageError, DataError, StorageError) as e:
        logger.error(e)
        return 2

    # 2. Ray, and the settings that follow from what it has (a GPU or not).
    logger.info("starting Ray" if args.address is None else f"joining Ray at {args.address}")
    nodes = start_ray(args.address, quiet=args.quiet)
    stop.install()  # again: ray.init puts its own SIGTERM handler in place, which aborts
    try:
        settings = saved or resolve_settings(args, storage, cluster_gpus(nodes) > 0)
        check_resources(settings, nodes, local=args.address is None)
    except UsageError as e:
        logger.error(e)
        return 2
    if settings.reduced:
        logger.info("reduced run: %s", settings.reduced)
    save_settings(settings)
    started.append(settings.name)
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
    # Interrupted, the search ends after the Ray Tune run in progress: no winner, retrain or
    # report for a search that did not finish; its trials continue when it is resumed.
    started = time.perf_counter()
    declared = declared_node_types() if args.address else None
    concurrency = trial_concurrency(settings, nodes, args.max_concurrent_trials, declared)
    with stop.during_fit():
        pause_at("baselines")
        baseline_records, baseline = run_seed_baseline(settings, splits, concurrency)
    stop.raise_if_interrupted()
    search_started = time.perf_counter()
    # The duration of the whole command, printed from the first epochs (tune.duration).
    from tune.duration import DurationEstimate, record_actual, shape_of

    retrain_scale = (len(splits.train) + len(splits.val)) / max(1, len(splits.train))
    shape = shape_of(
        settings,
        concurrency,
        retrain_scale,
        retrain=not args.skip_retrain,
        baseline_done=bool(baseline_records),
        # A matching seeds experiment found elsewhere is already retrained.
        external_baseline=baseline is not None,
    )
    estimate = DurationEstimate(settings, shape, time.perf_counter() - command_started)
    with stop.during_fit():
        grid = run_search(settings, splits, concurrency, project_level(), [estimate])
    stop.raise_if_interrupted()
    records = collect_records(grid)
    with stop.during_fit():
        records += run_finalists(settings, splits, records, concurrency)
    stop.raise_if_interrupted()
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
    record_actual(settings, time.perf_counter() - command_started, resumed=saved is not None)
    report(settings, outcome, final)
    logger.info(
        f"report: {storage.uri}/report.md\nTensorBoard: "
        + shlex.join([beside_interpreter("tensorboard"), "--logdir", storage.uri])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
