"""One Ray Tune trial: resolve the sampled configuration, train, report every epoch.

The training itself is `training.loop.train`, which knows nothing of Ray; this module
only adapts its per-epoch callback to Ray (metrics, checkpoints) and TensorBoard.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune as ray_tune
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from search_spaces import raw_params, trial_configs
from training.artifacts import code_version
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import cap_batch_size, fit_batch_to_data
from training.data import DataSplits
from training.logs import configure_logging
from training.loop import NonFiniteLossError, TrainState, train
from tune import faults
from tune.ray_compat import local_trial_dir

logger = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
TENSORBOARD_DIR = "tensorboard"  # inside each trial's folder


@dataclass(frozen=True)
class TrialSettings:
    max_epochs: int  # every trial's schedule spans this many epochs; ASHA may stop it sooner
    max_batch_size: int | None  # cap on the sampled batch size (reduced CPU runs)
    use_gpu: bool  # train on the GPU Ray assigned to the trial
    threads: int  # torch CPU threads (the trial's CPU share)
    log_level: int = logging.INFO  # the driver's logging level, for the worker's lines


def _hparam_value(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else str(value)


def run_trial(config: dict[str, Any], data: DataSplits, settings: TrialSettings) -> None:
    """The Ray function trainable."""
    configure_logging(settings.log_level)
    torch.set_num_threads(settings.threads)
    arch, cfg = trial_configs(config, settings.max_epochs, rungs=True)
    cfg = cap_batch_size(cfg, settings.max_batch_size).replace(seed=config["seed"])
    cfg, note = fit_batch_to_data(cfg, len(data.train))
    if note:
        logger.info(note)
    params = config["params"]
    device = "cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu"

    resume = None
    checkpoint = ray_tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    start_epoch = resume["epoch"] if resume else 0

    # The trial's working folder is synced to its storage folder (sync_artifacts), which
    # works for cloud storage too. purge_step drops any epochs logged after the checkpoint
    # this trial resumes from, so a restarted trial's curve has no duplicates.
    # Ray's last sync of a stopped trial runs *before* its thread's `finally` (ray/train/
    # _internal/session.py: finish), so what the `finally` writes (the hparams session end)
    # was often lost: on local storage, write the logs in place, where nothing needs a sync.
    trial_dir = local_trial_dir()
    tb_dir = str(trial_dir / TENSORBOARD_DIR) if trial_dir else TENSORBOARD_DIR
    planned = faults.planned_faults(config.get("trial_number"))
    writer = SummaryWriter(tb_dir, purge_step=start_epoch + 1)
    hp = {k: _hparam_value(v) for k, v in raw_params(config).items()}
    hp.update(
        params=params,
        target_params=config.get("target_params", params),
        width_scale=config.get("width_scale", 1.0),
        seed=config["seed"],
    )
    experiment, start_info, end_info = hparams(hp, metric_dict={"hparam/val_acc": 0.0})
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(start_info)

    last: dict[str, float] = {}  # the latest epoch's metrics, for a failure report
    node_info = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": device,
        "code_version": code_version(),  # of the code that trained this trial
    }

    def report(metrics: dict[str, float], state: TrainState) -> None:
        step = int(metrics["epoch"])
        for name in ("loss", "acc"):
            writer.add_scalar(f"train/{name}", metrics[f"train_{name}"], step)
            if f"val_{name}" in metrics:
                writer.add_scalar(f"val/{name}", metrics[f"val_{name}"], step)
        writer.add_scalar("lr", metrics["lr"], step)
        writer.add_scalar("images_per_sec", metrics["images_per_sec"], step)
        writer.add_scalar("hparam/val_acc", metrics.get("val_acc", math.nan), step)
        writer.flush()
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder) / CHECKPOINT_FILE, state.checkpoint())
            # When ASHA stops the trial, this call raises SystemExit; `finally` below runs.
            ray_tune.report(
                {**metrics, **node_info, "width_scale": config.get("width_scale", 1.0)},
                checkpoint=ray_tune.Checkpoint.from_directory(folder),
            )
        faults.strike(planned, step, state.model, Path(tb_dir).parent)
        last.update(metrics)

    try:
        train(arch, cfg, data, report=report, device=device, resume=resume)
    except (NonFiniteLossError, torch.cuda.OutOfMemoryError) as e:
        # Retrying cannot help (the same configuration fails the same way), so the trial
        # ends here with its reason, which the searcher tells Optuna as a failed region
        # (tune.study.tell_outcome). Its val_acc is NaN, not 0: ASHA's cut is a percentile
        # that ignores NaN, so a failure never lowers a rung's bar for the others.
        reason = f"{type(e).__name__}: {e}"
        if isinstance(e, torch.cuda.OutOfMemoryError):
            reason += (
                f" (batch size {cfg.batch_size}, {params:,} parameters; give each trial more "
                "GPU memory with a larger --gpus-per-trial)"
            )
        ray_tune.report(
            {**last, **node_info, "params": params, "val_acc": math.nan, "failure": reason}
        )
    finally:
        writer.file_writer.add_summary(end_info)
        writer.close()
