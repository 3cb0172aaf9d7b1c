"""Running the trials on Ray: starting (or joining) Ray, fitting trials to its nodes, and the
Tuner with its searcher and scheduler, new or restored."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces import derive_seed, get_space
from training.data import DataSplits
from tune.cli import UsageError
from tune.ray_compat import (
    bind_local_ray_to_loopback,
    refill_asha_rungs,
    restored_scheduler,
    use_ray_auth_mode,
)
from tune.rungs import asha_bracket_plan, asha_brackets, asha_milestones
from tune.settings import SearchSettings

if TYPE_CHECKING:
    from tune.trainable import TrialResources

logger = logging.getLogger(__name__)


# Set before Ray is imported: our own TensorBoard writer replaces Ray's, the experiment
# state is saved every 5 s (a killed driver loses little), and logs are not de-duplicated.
RAY_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_GLOBAL_CHECKPOINT_S": "5",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "0",
}


def start_ray(
    address: str | None, quiet: bool = False, log_to_driver: bool = True
) -> list[dict[str, Any]]:
    """Start an embedded local Ray (or join the cluster at `address`); its live nodes.
    `log_to_driver`: the trials' own output shows here (off in a notebook unless asked).

    Works whatever was imported first (ray too, as a notebook may do) and whatever
    RAY_AUTH_MODE is: the environment is prepared, then this process's Ray made to follow it
    (tune.ray_compat)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not address:
        # The embedded local Ray binds every server to the loopback interface, so nothing
        # of it is reachable from outside this machine.
        bind_local_ray_to_loopback()
        # And it asks for Ray's token (~/.ray/auth_token, made on the first run), so another
        # user of this machine cannot run code through it either. Said here, it is what Ray
        # does anyway, without the warning Ray prints when it decides so itself.
        mode = use_ray_auth_mode("token")
        if mode == "token":
            logger.info("Ray token authentication on (README: Security)")
    else:
        # A cluster (--address) keeps its own mode, which RAY_AUTH_MODE must match.
        use_ray_auth_mode(None)
    import ray

    # No dashboard either way: it would be one more open port with no authentication.
    # "local" starts our own Ray: with no address, ray.init joins whatever cluster `ray start`
    # last started on this machine (its address file outlives it, and then ray.init waits
    # for a dead GCS forever).
    ray.init(
        address=address or "local",
        include_dashboard=False,
        log_to_driver=log_to_driver,
        logging_level=logging.WARNING if quiet else logging.INFO,
    )
    if not address and os.environ.get("RAY_AUTH_MODE") == "token":
        keep_token_private(RAY_TOKEN_FILE.expanduser())
    return [n for n in ray.nodes() if n.get("Alive")]


RAY_TOKEN_FILE = Path("~/.ray/auth_token")  # where Ray keeps the token it generated


def keep_token_private(path: Path) -> None:
    """Ray writes its token with the process's umask (often readable by everyone); a token
    others can read guards nothing, so it is made readable by its owner alone."""
    if path.is_file() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o600)
        logger.info("made %s readable by you alone", path)


def cluster_gpus(nodes: list[dict[str, Any]]) -> float:
    return sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)


def _fits(available: float, per_trial: float) -> int:
    """How many shares of `per_trial` fit in `available`; 1 / 0.2 is 5, not float's 4."""
    return int(available / per_trial + 1e-9) if per_trial > 0 else 0


def _node_slots(settings: SearchSettings, resources: dict[str, float]) -> int:
    """How many trials fit on one node with these resources (a trial stays on one node)."""
    by_cpu = _fits(resources.get("CPU", 0), settings.cpus_per_trial)
    if settings.gpus_per_trial > 0:
        return min(by_cpu, _fits(resources.get("GPU", 0), settings.gpus_per_trial))
    return by_cpu


def trial_slots(settings: SearchSettings, nodes: list[dict[str, Any]]) -> int:
    """How many trials fit on the cluster's live nodes at once."""
    return sum(_node_slots(settings, node.get("Resources", {})) for node in nodes)


def trial_concurrency(
    settings: SearchSettings,
    nodes: list[dict[str, Any]],
    requested: int | None,
    declared: list[tuple[dict[str, float], int]] | None,
) -> int:
    """How many trials run (or wait for a node) at once. With a searcher Ray Tune keeps only
    this many trials, so on an autoscaling cluster it is also the demand the autoscaler sees:
    one pending trial, one GPU node at a time. Hence: --max-concurrent-trials if given, else
    as many as the cluster's declared maximum (`declared`: resources and most nodes per node
    type) can run, else as many as its live nodes can; at least one, at most the trials."""
    live = trial_slots(settings, nodes)
    if requested:
        concurrency, source = requested, "--max-concurrent-trials"
    elif declared:
        concurrency = sum(_node_slots(settings, res) * count for res, count in declared)
        source = "the cluster's declared maximum nodes"
    else:
        concurrency, source = live, "the live nodes"
    if concurrency < 1:
        logger.warning(
            "no node can run a trial yet and the cluster declares no maximum size: trials "
            "start one at a time, so an autoscaler adds one node at a time; pass "
            "--max-concurrent-trials N (the trials that fit on the largest cluster) to ask "
            "for all the nodes at once"
        )
        concurrency, source = 1, "no node yet"
    if not settings.unlimited:
        concurrency = min(concurrency, settings.num_samples)
    logger.info(
        "at most %d trial(s) at once (%s; %d fit on the live nodes now)",
        concurrency,
        source,
        live,
    )
    return concurrency


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
        logger.info("no GPU node is up yet: trials wait until the cluster's autoscaler adds one")


def short_trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _fixed_trial_configs(settings: SearchSettings) -> list[dict[str, Any]]:
    """Each fixed trial of the space with the constants a sampled trial carries."""
    import optuna

    space = get_space(settings.space)
    configs = []
    for number, point in enumerate(space.fixed_trials):
        constants = space.sample(optuna.trial.FixedTrial(point), settings.budget)
        configs.append(
            {
                **point,
                **constants,
                "seed": derive_seed(settings.seed, number),
                "trial_number": number,
            }
        )
    return configs


def finalist_rounds(settings: SearchSettings, concurrency: int) -> int:
    """Rounds of full trials the finalists' re-runs take, `concurrency` at a time."""
    runs = settings.finalists * settings.finalist_seeds
    return -(-runs // max(1, concurrency)) if runs else 0


def make_tuner(
    settings: SearchSettings,
    trainable: Any,
    concurrency: int,
    verbose: int,
    callbacks: list[Any] | None = None,
) -> Any:
    from ray import tune as ray_tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tune.callbacks import project_callbacks
    from tune.schedulers import SearchScheduler
    from tune.searcher import StudySearcher
    from tune.study import startup_trials
    from tune.time_budget import TimeBudget
    from tune.trial_table import TrialTable

    space = get_space(settings.space)
    if space.fixed_trials:
        # Fixed trials are baselines: each runs its whole schedule, none is stopped early.
        scheduler: Any = FIFOScheduler()
        configs = _fixed_trial_configs(settings)
        # Ray's variant generator fills only keys that the param space already has.
        param_space: dict[str, Any] = dict.fromkeys(configs[0])
        search_alg: Any = BasicVariantGenerator(points_to_evaluate=configs)
        num_samples = len(configs)
    else:
        # Rungs that judge finished schedules: every trial trains a warm-up-stable-decay
        # schedule over --max-epochs and, at each rung, evaluates a short decay branch on a
        # copy of its weights (training.loop._decay_branch), so a rung compares what each
        # trial would reach if its run ended there, not schedules caught mid-way. Chosen over
        # a complete schedule per rung budget because that needs a restart (or a re-warm-up)
        # of every promoted trial; the branches cost a fifth of the epochs up to each rung
        # (docs/results.md measures both the ranking and the cost).
        brackets = asha_brackets(
            settings.max_epochs, settings.grace_period, settings.reduction_factor
        )
        # Each trial's bracket is drawn by the searcher and kept in its config, where the
        # scheduler reads it: a resumed trial stays in its bracket (tune.schedulers).
        scheduler = SearchScheduler(
            time_attr="training_iteration",
            max_t=settings.max_epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
            brackets=brackets,
        )
        rungs = asha_milestones(
            settings.max_epochs, settings.grace_period, settings.reduction_factor, brackets
        )
        # The study enqueues the space's known-good configurations as its first trials;
        # they are trained and judged like every other trial.
        search_alg = StudySearcher(
            space=settings.space,
            budget=settings.budget,
            seed=settings.seed,
            max_epochs=settings.max_epochs,
            storage_path=settings.storage_path,
            name=settings.name,
            n_startup_trials=startup_trials(settings.num_samples, len(space.starting_points)),
            rung_epochs=rungs,
            brackets=asha_bracket_plan(
                settings.max_epochs, settings.grace_period, settings.reduction_factor, brackets
            ),
            time_budget_s=settings.time_budget_s,
            reserve_rounds=finalist_rounds(settings, concurrency),
            warm_start=settings.warm_start,
            configurations=None if settings.unlimited else settings.num_samples,
        )
        param_space = {}
        # The searcher says when the search has given its configurations: Ray would count
        # a configuration run again alone (out of memory beside others) as another sample.
        num_samples = -1
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
            # With a searcher Ray keeps one trial at a time unless told how many to keep.
            max_concurrent_trials=concurrency,
            # A new trial runs in a finished trial's worker process: no process start and
            # imports per trial (seconds each). The trainable resets what a trial leaves.
            reuse_actors=True,
        ),
        run_config=ray_tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage_path,
            failure_config=ray_tune.FailureConfig(max_failures=2),
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
            sync_config=ray_tune.SyncConfig(sync_artifacts=True),
            callbacks=[
                CSVLoggerCallback(),
                JsonLoggerCallback(),
                *project_callbacks(settings.storage.local_dir),
                *(callbacks or []),
            ],
            # --time-budget, counted across resumes (Ray's own time_budget_s restarts).
            stop=TimeBudget(
                settings.time_budget_s,
                settings.storage_path,
                settings.name,
                reserve_rounds=finalist_rounds(settings, concurrency),
                max_epochs=settings.max_epochs,
            )
            if settings.time_budget_s
            else None,
            verbose=verbose,
            progress_reporter=TrialTable(
                None if space.fixed_trials or settings.unlimited else settings.num_samples
            ),
        ),
    )


def _trainable(settings: SearchSettings, splits: DataSplits, log_level: int) -> Any:
    """The Ray trainable of every trial of the experiment, with its data and resources."""
    from ray import tune as ray_tune

    from tune.trainable import TrialSettings, run_trial, share_trial_data

    # Trials never see test. By reference: a reused worker fetches it once, not per trial.
    trial_data = share_trial_data(DataSplits(train=splits.train, val=splits.val))
    trial_settings = TrialSettings(
        max_epochs=settings.max_epochs,
        max_batch_size=settings.max_batch_size,
        use_gpu=settings.gpus_per_trial > 0,
        threads=max(1, int(settings.cpus_per_trial)),
        log_level=log_level,
        checkpoint_every_s=settings.checkpoint_every_s,
        precision=settings.precision,
        gpus=settings.gpus_per_trial,
    )
    # Per trial: a configuration retried alone after running out of memory on a shared GPU
    # asks for a whole one (tune.trainable.RETRY_ALONE_KEY).
    return ray_tune.with_resources(
        ray_tune.with_parameters(run_trial, data=trial_data, settings=trial_settings),
        trial_resources(settings),
    )


def trial_resources(settings: SearchSettings) -> TrialResources:
    """What Ray reserves for each trial: a GPU share gets the trial its own GPU (Ray sets
    CUDA_VISIBLE_DEVICES), so two GPUs in one machine each run trials."""
    from tune.trainable import TrialResources

    return TrialResources(cpus=settings.cpus_per_trial, gpus=settings.gpus_per_trial)


def run_search(
    settings: SearchSettings,
    splits: DataSplits,
    concurrency: int,
    log_level: int = logging.INFO,
    callbacks: list[Any] | None = None,
) -> Any:
    """Run (or continue) the experiment's trials to the end; Ray's ResultGrid. `callbacks`:
    more Ray Tune callbacks for a new run (a restored one keeps those it was saved with)."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    from tune.callbacks import with_project_callbacks
    from tune.faults import pause_at
    from tune.trial_table import use_trial_table

    use_trial_table()
    trainable = _trainable(settings, splits, log_level)
    path = settings.storage.uri
    if ray_tune.Tuner.can_restore(path):
        logger.info("resuming the search in %s", path)
        tuner = ray_tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        with_project_callbacks(tuner, settings.storage.local_dir)
        scheduler = restored_scheduler(tuner)
        if isinstance(scheduler, ASHAScheduler):
            refilled = refill_asha_rungs(tuner, scheduler)
            logger.info(
                "scheduler %s; refilled %d ASHA rung entries", type(scheduler).__name__, refilled
            )
    else:
        tuner = make_tuner(
            settings,
            trainable,
            concurrency,
            verbose=1 if log_level <= logging.INFO else 0,
            callbacks=callbacks,
        )
    pause_at("search")
    return tuner.fit()


def run_fixed_trials(
    settings: SearchSettings,
    splits: DataSplits,
    configs: list[dict[str, Any]],
    part: str,
    concurrency: int,
    log_level: int = logging.INFO,
) -> Any:
    """Run (or continue) fixed trial configurations as a Ray experiment of their own in the
    experiment's folder `part/` (the finalists' re-runs, the seed baselines): each trains its
    whole schedule (FIFO, never stopped early), packed on the trial resources like the
    search's trials. A resumed one keeps its finished trials. Ray's ResultGrid."""
    from ray import tune as ray_tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler

    from tune.callbacks import project_callbacks, with_project_callbacks
    from tune.faults import pause_at
    from tune.fixed_trials import FixedTrials
    from tune.trial_table import TrialTable, use_trial_table

    use_trial_table()
    trainable = _trainable(settings, splits, log_level)
    path = f"{settings.storage.uri}/{part}"
    if ray_tune.Tuner.can_restore(path):
        logger.info("resuming %s in %s", part, path)
        tuner = ray_tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        with_project_callbacks(tuner, settings.storage.local_dir)
        pause_at(part)
        return tuner.fit()
    tuner = ray_tune.Tuner(
        trainable,
        param_space={},
        tune_config=ray_tune.TuneConfig(
            search_alg=FixedTrials(configs),
            scheduler=FIFOScheduler(),
            metric="val_acc",
            mode="max",
            num_samples=len(configs),
            trial_dirname_creator=short_trial_dirname,
            max_concurrent_trials=max(1, min(concurrency, len(configs))),
        ),
        run_config=ray_tune.RunConfig(
            name=part,
            storage_path=settings.storage.uri,
            failure_config=ray_tune.FailureConfig(max_failures=2),
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
            sync_config=ray_tune.SyncConfig(sync_artifacts=True),
            callbacks=[
                CSVLoggerCallback(),
                JsonLoggerCallback(),
                *project_callbacks(settings.storage.local_dir),
            ],
            verbose=1 if log_level <= logging.INFO else 0,
            progress_reporter=TrialTable(),
        ),
    )
    pause_at(part)
    return tuner.fit()
