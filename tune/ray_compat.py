"""Every use of Ray Tune's private internals, each behind one small function.

Written against Ray 2.60.0 (pinned in pyproject.toml). Where Ray's objects are not what
that version has (another version, or Ray Client's proxies), each function falls back to
what works without the internals and says so in a warning, so a search still runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def bind_local_ray_to_loopback() -> None:
    """Make a local Ray started next bind every server to 127.0.0.1. Ray's switch for it is
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray otherwise resolves even an explicit 127.0.0.1 to
    the machine's network address); it is read once, when ray is first imported, into
    `ray._private.ray_constants.ENABLE_RAY_CLUSTER`, which the driver consults (as a module
    attribute, in `ray._private.services.get_node_ip_address`) only when it starts its node.
    So the variable is set for Ray's own processes, and where ray was imported already (a
    notebook, a tool that imports ray first) the driver's constant is set to match."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is None:
        return
    wanted = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in ("1", "true")
    if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        logger.warning(
            "this Ray has no ray_constants.ENABLE_RAY_CLUSTER (written for Ray 2.60), and ray "
            "was imported before the search could bind its local Ray to 127.0.0.1: its servers "
            "may listen on this machine's network address; keep the machine behind a firewall"
        )
        return
    constants.ENABLE_RAY_CLUSTER = wanted


def use_ray_auth_mode(default: str | None) -> str | None:
    """Set RAY_AUTH_MODE to `default` unless it is set, and make this process's Ray follow
    what the variable says now. Ray's Python side reads the mode from its C++ config
    (`ray._raylet.get_authentication_mode`), which is filled from the environment when
    `ray._raylet` is imported and again only by `Config.initialize` (Ray 2.60 calls that
    itself only when it turns token mode on for an unset variable). The GCS and raylet Ray
    starts read the variable afresh. So a variable set after ray was imported left the
    driver in one mode and its GCS in the other: with no token file the GCS aborted
    (`Check failed: has_token`), with one the driver was refused (AuthenticationError).
    Refreshing the config here keeps them in one mode, whatever was imported first. Ray
    then writes ~/.ray/auth_token itself, in `ray.init`, when token mode has no token yet.
    Returns the mode in force (None: unset, Ray's own default)."""
    if default is not None:
        os.environ.setdefault("RAY_AUTH_MODE", default)
    raylet = sys.modules.get("ray._raylet")
    if raylet is not None:
        try:
            raylet.Config.initialize("")
        except AttributeError:  # not the Ray this was written for
            logger.warning(
                "cannot refresh Ray's authentication mode (no ray._raylet.Config.initialize, "
                "written for Ray 2.60): import nothing that imports ray before "
                "tune.runner.start_ray, or set RAY_AUTH_MODE before Python starts"
            )
    return os.environ.get("RAY_AUTH_MODE")


def restored_scheduler(tuner: Any) -> Any | None:
    """The trial scheduler of a Tuner made by `Tuner.restore` (no public accessor)."""
    try:
        return tuner._local_tuner._tune_config.scheduler
    except AttributeError:
        return None


def refill_asha_rungs(tuner: Any, scheduler: Any | None = None) -> int:
    """Ray restores the ASHA scheduler object as it was pickled when the experiment started,
    not what its rungs have recorded since (scheduler state is not part of the experiment
    checkpoint: ray-project/ray#30838, open), so a resumed search would compare new trials against empty rungs and stop none. Refill them
    from the restored results, as the scheduler recorded them: the metric at each
    milestone's own iteration, times the scheduler's sign for its
    mode, into the one bracket the trial belongs to. Returns the entries written; 0, with a
    warning, where the scheduler is not the ASHA of the pinned Ray."""
    scheduler = scheduler if scheduler is not None else restored_scheduler(tuner)
    try:
        brackets = scheduler._brackets
        assigned = scheduler._trial_info
        rungs = [bracket._rungs for bracket in brackets]
        time_attr = scheduler._time_attr
        # A scheduler that took its metric and mode from the TuneConfig was pickled before
        # Ray handed them over: read them where they were given.
        tune_config = tuner._local_tuner._tune_config
        metric = scheduler._metric or tune_config.metric
        mode = scheduler._mode or tune_config.mode
        sign = {"max": 1.0, "min": -1.0}[mode]
    except (AttributeError, KeyError):
        logger.warning(
            "the restored scheduler (%s) is not the ASHA of Ray 2.60: its rungs start empty, "
            "so trials before the first new rung are not compared with finished ones",
            type(scheduler).__name__,
        )
        return 0
    filled = 0
    for result in tuner.get_results():
        history = result.metrics_dataframe
        if history is None or metric not in history or time_attr not in history:
            continue
        history = history.dropna(subset=[metric])
        if not len(history):
            continue
        trial_id = str(history["trial_id"].iloc[-1])
        bracket = assigned.get(trial_id)
        index = _config_bracket(result, len(rungs))
        if index is None:
            index = brackets.index(bracket) if bracket in brackets else _bracket_of(trial_id, rungs)
        for milestone, recorded in rungs[index]:
            # The value of the rung's own epoch (its decay branch's), as tune.schedulers
            # judges; a trial whose reports skip that epoch was never judged there.
            reached = history[history[time_attr] == milestone]
            if len(reached) and trial_id not in recorded:
                recorded[trial_id] = sign * float(reached[metric].iloc[0])
                filled += 1
    return filled


def _config_bracket(result: Any, brackets: int) -> int | None:
    """The bracket the trial's config names (a search's trials carry theirs, see
    tune.schedulers), where the scheduler will put the restored trial too."""
    from tune.schedulers import config_bracket

    return config_bracket(getattr(result, "config", None), brackets)


def _bracket_of(trial_id: str, rungs: list[Any]) -> int:
    """The bracket of a trial whose config names none (an experiment started before trials
    carried theirs): any fixed choice keeps each trial in exactly one bracket, as ASHA does
    (a stable hash, not Python's salted one)."""
    return int(hashlib.sha256(trial_id.encode()).hexdigest(), 16) % len(rungs)


def local_trial_dir() -> Path | None:
    """The running trial's folder in the experiment, when the experiment is on the local
    (or a shared) filesystem; None on cloud storage or outside a trial. Ray's trial
    context exposes it only through its StorageContext, a developer API whose attributes
    are Ray's own (ray-project/ray#39281)."""
    from ray import tune as ray_tune

    try:
        storage = ray_tune.get_context().get_storage()
        if storage is None or storage.storage_filesystem.type_name != "local":
            return None
        return Path(storage.trial_fs_path)
    except (AttributeError, RuntimeError):
        logger.warning(
            "Ray's trial storage is not what Ray 2.60 has; logs go to the trial's "
            "working folder and reach storage with its next sync"
        )
        return None


# The cluster launcher writes the autoscaling config it started with onto the head node
# (ray/autoscaler/_private/commands.py, Ray 2.60); a job submitted there runs beside it.
LAUNCHER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"


def declared_node_types() -> list[tuple[dict[str, float], int]] | None:
    """What the cluster may grow to, as (resources of one node, most such nodes) per node
    type; None where the cluster declares nothing (a fixed cluster, or an autoscaler that
    publishes nothing the driver can read: KubeRay's, see docker/rayjob.yaml).

    Read from the cluster config an autoscaler reports to the GCS (a private accessor of
    Ray's global state, used by Ray Train v2 for the same question), else from the cluster
    launcher's config on the head."""
    try:
        import ray._private.state as ray_state

        config = ray_state.state.get_cluster_config()
    except Exception as e:  # another Ray, Ray Client, or no GCS to ask
        logger.debug("no cluster config from the GCS: %s", e)
        config = None
    if config is not None and config.node_group_configs:
        return [
            ({k: float(v) for k, v in group.resources.items()}, int(group.max_count))
            for group in config.node_group_configs
        ]
    return launcher_node_types(LAUNCHER_CONFIG)


def launcher_node_types(path: Path) -> list[tuple[dict[str, float], int]] | None:
    """(resources, most nodes) per node type of a cluster launcher config; None if there is
    none or it does not say. The head type counts one node more (the head itself). The
    config's own max_workers caps each type's count (it caps their sum too, so with several
    worker types that each reach it this is an upper bound)."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
        node_types = config["available_node_types"]
        head_type = config["head_node_type"]
        cap = int(config.get("max_workers", sys.maxsize))
        declared = []
        for name, node_type in node_types.items():
            resources = {k: float(v) for k, v in (node_type.get("resources") or {}).items()}
            workers = min(int(node_type.get("max_workers", 0)), cap)
            declared.append((resources, workers + (1 if name == head_type else 0)))
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as e:
        logger.warning("cannot read the cluster launcher's config %s: %s", path, e)
        return None
    return declared
