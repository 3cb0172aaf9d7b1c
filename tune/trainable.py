"""One Ray Tune trial: resolve the sampled configuration, train, report every epoch.

The training itself is `training.loop.train`, which knows nothing of Ray; this module
only adapts its per-epoch callback to Ray (metrics, checkpoints) and TensorBoard.

Workers are reused across trials (the runner sets Ray's `reuse_actors`): a new trial runs in
the previous trial's process, which saves the process start and the imports (seconds per
trial). So each trial first resets what a trial leaves behind (`reset_worker`), and the
training images go to the device once per worker (`worker_data`), not once per trial.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune as ray_tune
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from search_spaces import raw_params, trial_configs
from training.artifacts import code_version, write_json
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import cap_batch_size, fit_batch_to_data
from training.data import DataSplits
from training.logs import configure_logging
from training.loop import NonFiniteLossError, TrainState, train
from tune import faults
from tune.ray_compat import local_trial_dir

logger = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
# A trial config's flag: this configuration ran out of GPU memory beside other trials and
# runs again alone, on a whole GPU (tune.searcher), before it may be called infeasible.
RETRY_ALONE_KEY = "retry_alone"
# What CUDA's libraries say when they cannot allocate: cuDNN and cuBLAS raise a plain
# RuntimeError (not torch.cuda.OutOfMemoryError) when the memory others hold leaves them none.
OUT_OF_MEMORY_MARKERS = (
    "CUDA out of memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
)
TENSORBOARD_DIR = "tensorboard"  # inside each trial's folder
TIMES_FILE = "trial_times.json"  # inside each trial's folder: started_at, ended_at, pid


@dataclass(frozen=True)
class TrialSettings:
    max_epochs: int  # every trial's schedule spans this many epochs; ASHA may stop it sooner
    max_batch_size: int | None  # cap on the sampled batch size (reduced CPU runs)
    use_gpu: bool  # train on the GPU Ray assigned to the trial
    threads: int  # torch CPU threads (the trial's CPU share)
    log_level: int = logging.INFO  # the driver's logging level, for the worker's lines
    # A trial checkpoints at most this often (seconds) and after its last epoch; 0: every
    # epoch. A killed trial loses at most this much training.
    checkpoint_every_s: float = 60.0
    # Every trial's TrainConfig.precision: "auto" chooses by the trial's device
    # (training.precision); each epoch's metrics say what it chose.
    precision: str = "auto"
    # The share of a GPU each trial asks for (--gpus-per-trial): below 1, trials are packed
    # on a GPU, and one that runs out of memory there is retried alone.
    gpus: float = 0.0


@dataclass(frozen=True)
class TrialResources:
    """What a trial asks Ray for (`ray.tune.with_resources` calls it with the trial's
    config): its CPUs and its share of a GPU, or a whole GPU for a retry alone."""

    cpus: float
    gpus: float

    def __call__(self, config: dict[str, Any]) -> Any:
        gpus = max(1.0, self.gpus) if config.get(RETRY_ALONE_KEY) and self.gpus > 0 else self.gpus
        bundle = {"CPU": self.cpus, **({"GPU": gpus} if gpus > 0 else {})}
        return ray_tune.PlacementGroupFactory([bundle])


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or a CUDA library's allocation failure (a RuntimeError)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in OUT_OF_MEMORY_MARKERS)


@dataclass(frozen=True)
class TrialData:
    """The trials' data in Ray's object store, passed by reference: a reused worker fetches it
    (and copies it to its device) once, not once per trial. `key` names the object."""

    ref: Any  # ray.ObjectRef of a DataSplits
    key: str


def share_trial_data(data: DataSplits) -> TrialData:
    """Put `data` in Ray's object store once, for every trial (Ray must be running)."""
    ref = ray.put(data)
    return TrialData(ref=ref, key=ref.hex())


# The worker's training data on its device: (key, device) and the DataSplits it names.
_WORKER_DATA: dict[str, Any] = {}


def worker_data(
    data: DataSplits | TrialData,
    device: torch.device,
    fetch: Callable[[Any], DataSplits] = ray.get,
) -> DataSplits:
    """The trial's data on `device`: fetched and copied there on the first trial of this
    worker, then kept while the data (its object) and the device stay the same. Other data
    replaces it, and the previous copy is freed first (device memory holds one copy)."""
    if isinstance(data, DataSplits):  # called directly, not through Ray
        return DataSplits(
            train=data.train.to(device), val=data.val.to(device) if data.val is not None else None
        )
    key = (data.key, str(device))
    if _WORKER_DATA.get("key") != key:
        _WORKER_DATA.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        splits = fetch(data.ref)
        _WORKER_DATA["data"] = DataSplits(
            train=splits.train.to(device),
            val=splits.val.to(device) if splits.val is not None else None,
        )
        _WORKER_DATA["key"] = key
    return _WORKER_DATA["data"]


def reset_worker(seed: int, device: torch.device) -> None:
    """Start a trial as a fresh process would: the previous trial's model, optimizer and
    cached GPU blocks freed, every random generator seeded, cuDNN as the loop expects."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = device.type == "cuda"
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def trial_device(use_gpu: bool) -> torch.device:
    """cuda when the trial was given a GPU; a trial given one that sees none fails here, so
    that it never trains on the CPU unnoticed (on a lent GPU that would spend the lease)."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "this trial was given a GPU (--gpus-per-trial > 0) but sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}); fix the GPU setup, "
            "or pass --gpus-per-trial 0 to train on CPUs"
        )
    return torch.device("cuda")


@functools.cache
def _code_version() -> str:
    """Of the code this worker imported, which does not change for its life (two git calls
    once per worker, not once per trial)."""
    return code_version()


def start_hparams_session(writer: SummaryWriter, hp: dict[str, Any]) -> Any:
    """Write the trial's hyperparameters as a TensorBoard HParams session; return the
    session's end summary, to write when the trial ends. No experiment summary is written:
    TensorBoard then builds the experiment from every trial's session and marks the
    hyperparameters whose values differ between trials (one written per trial lists only that
    trial's values, and every hyperparameter reads "differs: false")."""
    _, start, end = hparams(hp, metric_dict={"hparam/val_acc": 0.0})
    writer.file_writer.add_summary(start)
    return end


def _hparam_value(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else str(value)


class EpochReporter:
    """The trial's per-epoch callback: TensorBoard scalars, then the metrics to `send` (Ray's
    report), with a checkpoint when one is due: after the last epoch, or when
    `checkpoint_every_s` have passed since the trial's start or its previous checkpoint.
    `seconds` is the time spent here, Ray's round trip included (what a trial loses to
    reporting); each report carries the total of the earlier ones as `report_seconds`."""

    def __init__(
        self,
        writer: SummaryWriter,
        send: Callable[..., None],
        *,
        last_epoch: int,
        checkpoint_every_s: float,
        extra: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer, self.send, self.last_epoch = writer, send, last_epoch
        self.every, self.extra, self.clock = checkpoint_every_s, extra, clock
        self.last_checkpoint = clock()
        self.seconds = 0.0
        self.checkpoints = 0

    def due(self, epoch: int) -> bool:
        return (
            epoch >= self.last_epoch
            or self.every <= 0
            or self.clock() - self.last_checkpoint >= self.every
        )

    def __call__(self, metrics: dict[str, Any], state: TrainState) -> None:
        started = time.perf_counter()
        try:
            step = int(metrics["epoch"])
            writer = self.writer
            for name in ("loss", "acc"):
                writer.add_scalar(f"train/{name}", metrics[f"train_{name}"], step)
                if f"val_{name}" in metrics:
                    writer.add_scalar(f"val/{name}", metrics[f"val_{name}"], step)
            writer.add_scalar("lr", metrics["lr"], step)
            writer.add_scalar("images_per_sec", metrics["images_per_sec"], step)
            writer.add_scalar("hparam/val_acc", metrics.get("val_acc", math.nan), step)
            writer.flush()
            payload = {**metrics, **self.extra, "report_seconds": self.seconds}
            if not self.due(step):
                self.send(payload)
                return
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder) / CHECKPOINT_FILE, state.checkpoint())
                self.last_checkpoint = self.clock()
                self.checkpoints += 1
                # When ASHA stops the trial, this call raises SystemExit.
                self.send(payload, checkpoint=ray_tune.Checkpoint.from_directory(folder))
        finally:
            self.seconds += time.perf_counter() - started


def use_gpu_shared(settings: TrialSettings, config: dict[str, Any]) -> bool:
    """Whether the trial trains on a GPU that other trials may share: a share below one,
    and not a retry alone."""
    return 0 < settings.gpus < 1 and not config.get(RETRY_ALONE_KEY)


def run_trial(
    config: dict[str, Any], data: DataSplits | TrialData, settings: TrialSettings
) -> None:
    """The Ray function trainable."""
    started_at = time.time()
    configure_logging(settings.log_level)
    torch.set_num_threads(settings.threads)
    device = trial_device(settings.use_gpu)
    reset_worker(config["seed"], device)
    splits = worker_data(data, device)
    arch, cfg = trial_configs(config, settings.max_epochs, rungs=True)
    cfg = cap_batch_size(cfg, settings.max_batch_size).replace(
        seed=config["seed"], precision=settings.precision
    )
    cfg, note = fit_batch_to_data(cfg, len(splits.train))
    if note:
        logger.info(note)
    params = config["params"]

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
    planned = [
        fault
        for fault in faults.planned_faults(config.get("trial_number"))
        if use_gpu_shared(settings, config) or not fault.get("shared_only")
    ]
    writer = SummaryWriter(tb_dir, purge_step=start_epoch + 1)
    hp = {k: _hparam_value(v) for k, v in raw_params(config).items()}
    hp.update(
        params=params,
        target_params=config.get("target_params", params),
        width_scale=config.get("width_scale", 1.0),
        seed=config["seed"],
    )
    end_info = start_hparams_session(writer, hp)

    last: dict[str, Any] = {}  # the latest epoch's metrics, for a failure report
    node_info = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": str(device),
        "code_version": _code_version(),  # of the code that trained this trial
        "started_at": started_at,  # seconds since the epoch, when this function began
    }
    reporter = EpochReporter(
        writer,
        ray_tune.report,
        last_epoch=cfg.epochs,
        checkpoint_every_s=settings.checkpoint_every_s,
        extra={**node_info, "width_scale": config.get("width_scale", 1.0)},
    )

    def report(metrics: dict[str, Any], state: TrainState) -> None:
        reporter(metrics, state)
        faults.strike(planned, int(metrics["epoch"]), state.model, Path(tb_dir).parent)
        last.update(metrics)

    try:
        train(arch, cfg, splits, report=report, device=device, resume=resume)
    except (NonFiniteLossError, RuntimeError) as e:
        out_of_memory = is_out_of_memory(e)
        if not out_of_memory and not isinstance(e, NonFiniteLossError):
            raise  # a bug, or a lost device: Ray retries the trial (FailureConfig)
        # Retrying in the same place cannot help (the same configuration fails the same
        # way), so the trial ends here with its reason, which the searcher tells Optuna as a
        # failed region (tune.study.tell_outcome). Its val_acc is NaN, not 0: ASHA's cut is a
        # percentile that ignores NaN, so a failure never lowers a rung's bar for the others.
        # Out of memory on a GPU shared with other trials may be theirs: the searcher runs it
        # again alone on a whole GPU first (RETRY_ALONE_KEY).
        reason = f"{type(e).__name__}: {e}"
        shared = use_gpu_shared(settings, config)
        failure = {"params": params, "val_acc": math.nan, "failure": reason}
        if out_of_memory and shared:
            reason += f" (batch size {cfg.batch_size}, {params:,} parameters, on a GPU shared "
            reason += "with other trials: retried alone on a whole GPU)"
            failure.update(failure=reason, **{RETRY_ALONE_KEY: True})
        elif out_of_memory:
            reason += (
                f" (batch size {cfg.batch_size}, {params:,} parameters"
                + (", alone on a whole GPU" if config.get(RETRY_ALONE_KEY) else "")
                + "; give each trial more GPU memory with a larger --gpus-per-trial)"
            )
            failure.update(failure=reason)
        ray_tune.report({**last, **node_info, **failure})
    finally:
        writer.file_writer.add_summary(end_info)
        writer.close()
        times = {"started_at": started_at, "ended_at": time.time(), "pid": os.getpid()}
        write_json((trial_dir or Path(".")) / TIMES_FILE, times)
