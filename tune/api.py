"""The search from Python, as a notebook runs it:

    from tune.api import search
    result = search(space="tiny", data="cifar-10-batches-py", name="first")
    result.leaderboard()
    result.predict(images)  # uint8 (N, 32, 32, 3), or image files

`search` takes the command's options as keyword arguments (the same names, defaults, checks
and messages: `python -m tune.search --num-samples 4` is `search(num_samples=4)`) and
returns a `tune.search_result.SearchResult`. What the command prints as an error is raised:
`SearchError` (a bad option, bad data, a budget that is too small), `NoResultError` (no
trial finished), `SearchStopped` (Ctrl-C, SIGTERM or a notebook's stop button; it carries
the call that resumes). Nothing stays installed after it returns or raises: the signal
handlers, logging and environment are put back and the Ray it started is shut down, so it
can run again in the same process. `load(folder)` reads any finished experiment back.

`run_search` is the search itself, shared with the command (tune.search), which maps these
exceptions to its messages and exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from training.logs import PROJECT_LOGGERS, configure_logging, level_from_flags
from tune.cli import (
    UsageError,
    beside_interpreter,
    build_parser,
    check_budget,
    command_line,
)
from tune.interrupt import SearchInterrupted, StopSignals
from tune.rungs import DEFAULT_REDUCTION_FACTOR
from tune.state_files import DamagedExperiment

if TYPE_CHECKING:
    from tune.search_result import SearchResult

logger = logging.getLogger("tune.search")
# Ray's loggers, quiet in a notebook unless verbose=True; put back afterwards.
RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air", "ray.widgets")
# Warnings a notebook need not show: tqdm's about ipywidgets (Ray imports tqdm.auto), and
# SciPy's about two sides whose seeds gave equal accuracies (the report says so in words).
QUIET_WARNINGS = ("IProgress not found", "Precision loss occurred in moment calculation")


class SearchError(ValueError):
    """The search refused its inputs (the message is the command's error line)."""

    exit_code = 2  # the command's exit status for it


class NoResultError(SearchError):
    """The search ran, but no trial trained every epoch: there is no winner. The report
    and trials.parquet in `folder` say why."""

    exit_code = 1

    def __init__(self, message: str, folder: str) -> None:
        super().__init__(message)
        self.folder = folder


class SearchStopped(Exception):
    """The search was stopped (Ctrl-C, SIGTERM, a notebook's stop button). `resume`: the
    Python call that continues it, `command`: the same as a command line; both None when it
    stopped before the experiment existed."""

    def __init__(
        self, signal_name: str, name: str | None, resume: str | None, command: str | None
    ) -> None:
        self.signal = signal_name
        self.name = name
        self.resume = resume
        self.command = command
        if resume:
            text = f"stopped by {signal_name}; resume with: {resume}"
        else:
            text = f"stopped by {signal_name} before the search started; nothing to resume"
        super().__init__(text)


def resume_command(argv: list[str], name: str) -> str:
    """The command line that continues the experiment `name`: the same one, naming it (its
    saved settings then win over the options; the others, like --skip-retrain, still count),
    run by the Python that ran this one."""
    args = list(argv)
    if "--name" not in args and not any(a.startswith("--name=") for a in args):
        args += ["--name", name]
    return command_line("tune.search", *args)


def in_notebook() -> bool:
    """Running in a Jupyter kernel (Colab, Kaggle, JupyterHub), whose output is a page."""
    if "ipykernel" not in sys.modules:
        return False
    isatty = getattr(sys.stdout, "isatty", None)
    return not (callable(isatty) and isatty())


# --- the search, shared with the command ---------------------------------------------------


def run_search(
    args: argparse.Namespace,
    stop: StopSignals,
    started: list[str],
    *,
    notebook: bool = False,
    argv: list[str] | None = None,
) -> SearchResult:
    """The search for parsed options: its result, or SearchError, NoResultError or
    SearchInterrupted (the experiment's name is in `started` once it exists). `notebook`:
    a line per ended trial and Ray quiet unless --verbose. Puts back the signal handlers and
    environment variables it found, and shuts down a Ray it started."""
    environ = dict(os.environ)
    ray_was_running = _ray_running()
    stop.install()
    try:
        return _search(args, stop, started, notebook, sys.argv[1:] if argv is None else argv)
    finally:
        # A stopped command keeps its handlers to its exit: a second Ctrl-C while Ray shuts
        # down or the resume line is written must still exit at once.
        if not (stop.interrupted and stop.exit_on_second):
            stop.uninstall()
        if not ray_was_running and _ray_running():
            import ray

            ray.shutdown()
        _restore_environ(environ)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # not imported: not running (and not imported for it)
    return bool(ray is not None and ray.is_initialized())


def _restore_environ(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


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


def _search(
    args: argparse.Namespace,
    stop: StopSignals,
    started: list[str],
    notebook: bool,
    argv: list[str],
) -> SearchResult:
    command_started = time.perf_counter()
    # 1. Everything that can be wrong with the inputs fails here, before Ray starts; first
    # what needs no torch, so that a typo does not wait seconds for its import.
    from tune.cli import validate_args

    try:
        validate_args(args)
    except UsageError as e:
        raise SearchError(str(e)) from e
    # Then the budget, which needs torch (it counts networks), before the other imports.
    from models import BudgetTooSmallError

    try:
        check_budget(args)
    except BudgetTooSmallError as e:
        raise SearchError(str(e)) from e
    # A GPU the installed torch cannot run stops the search here, before Ray starts.
    from training.precision import UnsupportedGpuError, check_visible_gpus

    if args.address is None and args.gpus_per_trial != 0:
        try:
            check_visible_gpus()
        except UnsupportedGpuError as e:
            raise SearchError(str(e)) from e

    from training.data import (
        DEFAULT_VAL_SIZE,
        DataError,
        TooFewTrainingImages,
        load_cifar10,
        load_images,
        make_splits,
    )
    from training.logs import project_level
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
        start_ray,
        trial_concurrency,
    )
    from tune.runner import (
        run_search as run_trials,
    )
    from tune.search_result import load
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
        raise SearchError(e.message(carry_on_command(argv, e))) from e
    except (UsageError, StorageError) as e:
        raise SearchError(str(e)) from e
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
        raise SearchError(str(e)) from e

    # 2. Ray, and the settings that follow from what it has (a GPU or not).
    logger.info("starting Ray" if args.address is None else f"joining Ray at {args.address}")
    if notebook:  # Ray's own lines only when asked for: the notebook shows a line per trial
        nodes = start_ray(
            args.address, quiet=args.quiet or not args.verbose, log_to_driver=args.verbose
        )
    else:
        nodes = start_ray(args.address, quiet=args.quiet)
    stop.install()  # again: ray.init puts its own SIGTERM handler in place, which aborts
    try:
        settings = saved or resolve_settings(args, storage, cluster_gpus(nodes) > 0)
        check_resources(settings, nodes, local=args.address is None)
    except UsageError as e:
        raise SearchError(str(e)) from e
    if settings.reduced:
        logger.info("reduced run: %s", settings.reduced)
    # --subset trims what the trials train and validate on; the test split stays whole.
    # Split before the settings are saved: data too small for them leaves no experiment.
    try:
        splits = make_splits(
            data, DEFAULT_VAL_SIZE, settings.subset, seed=settings.seed, subset_test=False
        )
    except TooFewTrainingImages as e:
        raise SearchError(
            f"{e}: pass --subset N (then N/4 of them are held out for validation)"
        ) from e
    save_settings(settings)
    started.append(settings.name)
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
    from tune.trial_table import compact_progress

    began = time.perf_counter()
    declared = declared_node_types() if args.address else None
    concurrency = trial_concurrency(settings, nodes, args.max_concurrent_trials, declared)
    with compact_progress(notebook):
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
            grid = run_trials(settings, splits, concurrency, project_level(), [estimate])
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
        raise NoResultError(
            "no trial trained every epoch, so there is no winner; see the status and error "
            "columns of trials.parquet (and the trials' error.txt), or give the search more "
            "time or trials",
            storage.uri,
        )
    final = None
    if not args.skip_retrain:
        final = retrain_best(settings, outcome.best, splits, predict)
        outcome.baseline = retrain_baseline(settings, outcome.baseline, splits)
    logger.info("all of it took %.1f min", (time.perf_counter() - began) / 60)
    record_actual(settings, time.perf_counter() - command_started, resumed=saved is not None)
    report(settings, outcome, final)
    logger.info(
        f"report: {storage.uri}/report.md\nTensorBoard: "
        + shlex.join([beside_interpreter("tensorboard"), "--logdir", storage.uri])
    )
    return load(storage.local_dir)


# --- the Python entry point ---------------------------------------------------------------


def search(
    *,
    space: str = "efficient_resnet",
    data: str | os.PathLike | None = None,
    budget: int | None = None,
    num_samples: int | None = None,
    time_budget: str | float | None = None,
    max_epochs: int | None = None,
    grace_period: int | None = None,
    reduction_factor: int = DEFAULT_REDUCTION_FACTOR,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1,
    address: str | None = None,
    max_concurrent_trials: int | None = None,
    checkpoint_every: float = 60.0,
    storage_path: str | os.PathLike = "experiments",
    name: str | None = None,
    resume: bool = False,
    seed: int = 0,
    precision: str = "auto",
    warm_start: str | None = None,
    retrain_epochs: int | None = None,
    retrain_seeds: int | None = None,
    finalists: int | None = None,
    finalist_seeds: int | None = None,
    baseline: str = "none",
    predict: str | os.PathLike | None = None,
    subset: int | None = None,
    full: bool = False,
    skip_retrain: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> SearchResult:
    """Search a space of CIFAR-10 ResNets, retrain the winner and test it: what
    `python -m tune.search` does, with its options as keyword arguments (see
    `python -m tune.search --help`; `time_budget` is seconds or text like "45m").

    Returns a `SearchResult`. Raises `SearchError` for what the command refuses (with its
    message), `NoResultError` if no trial finished, `SearchStopped` when interrupted (its
    `resume` is the call that continues: the same, naming the experiment; calling `search`
    again with the same `storage_path` and `name` continues it). In a notebook it prints a
    line per ended trial; `verbose=True` also shows Ray's and the trials' own output."""
    options = {key: value for key, value in locals().items()}
    argv = _argv(options)
    args = _parse(argv)
    notebook = in_notebook()
    stop = StopSignals(exit_on_second=False)
    started: list[str] = []
    with _logging_restored(), warnings.catch_warnings():
        for text in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=text)
        configure_logging(level_from_flags(args))
        if notebook and not args.verbose:
            for name_ in RAY_LOGGERS[1:]:
                logging.getLogger(name_).setLevel(logging.WARNING)
        try:
            return run_search(args, stop, started, notebook=notebook, argv=argv)
        except SearchInterrupted:
            pass
    if started:
        call = _call({**_given(options), "name": started[0]})
        raise SearchStopped(stop.name, started[0], call, resume_command(argv, started[0]))
    raise SearchStopped(stop.name, None, None, None)


def list_spaces() -> dict[str, str]:
    """The search spaces by name, with their descriptions."""
    from search_spaces import SPACES

    return {name: s.description for name, s in SPACES.items()}


def load(folder: str | os.PathLike) -> SearchResult:
    """The `SearchResult` of a finished experiment folder (STORAGE/NAME)."""
    from tune.search_result import load as load_result

    return load_result(folder)


def _defaults() -> dict[str, Any]:
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(search).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from their defaults, as the caller wrote them."""
    defaults = _defaults()
    return {k: v for k, v in options.items() if v != defaults[k]}


def _argv(options: dict[str, Any]) -> list[str]:
    """The command line of these options (those left at their defaults omitted)."""
    argv: list[str] = []
    for key, value in _given(options).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            continue
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        # "--budget=-5" keeps a value that begins with "-" from reading as an option.
        argv += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return argv


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command's parser, whose errors (a value of the wrong type) raise SearchError
    with its message instead of exiting."""
    parser = build_parser()

    def error(message: str) -> None:
        raise SearchError(message)

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def _call(options: dict[str, Any]) -> str:
    """`search(...)` with these keyword arguments, as Python to paste."""
    text = ", ".join(
        f"{k}={(os.fspath(v) if isinstance(v, os.PathLike) else v)!r}" for k, v in options.items()
    )
    return f"search({text})"


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """The project's loggers (level, handlers, propagation) and Ray's levels, put back as
    they were after the block. Ray's handlers stay: Ray adds them once, as it is imported."""
    saved = {}
    for name in PROJECT_LOGGERS:
        log = logging.getLogger(name)
        saved[name] = (log.level, list(log.handlers), log.propagate)
    levels = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
    try:
        yield
    finally:
        for name, (level, handlers, propagate) in saved.items():
            log = logging.getLogger(name)
            log.setLevel(level)
            log.handlers[:] = handlers
            log.propagate = propagate
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
