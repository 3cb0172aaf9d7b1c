"""The training loop: one plain function, no Ray, the same from the CLI, a test or a trial.

    result = train(arch, cfg, splits, report=callback)

Why it looks like this:
- The training images stay on the device as uint8 and every batch is gathered by index
  and augmented there, so no DataLoader, worker process or host copy sits in the step.
- Losses and accuracies accumulate in device tensors; the host reads them once an epoch.
  Nothing in the step loop waits for the device (no `.item()`), AutoAugment included.
- All randomness comes from one seeded device generator (shuffles, augmentation, mixing)
  plus torch's global RNG (dropout); both are checkpointed, so a resumed run continues
  exactly where it stopped.
- The precision is chosen once for the device (`training.precision`). Under fp16 the loss
  scaler's state is checkpointed too, and the steps it skips (inf/NaN gradients) are counted
  on the device, from its scale (it only falls on a skipped step), not read every step.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import swa_utils
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
)

from models import ArchConfig, ResNet, count_params
from training.artifacts import code_version
from training.augment import augment_batch, flip_tta_logits, mix_batch, normalize
from training.config import TrainConfig
from training.data import DataSplits, ImageSet
from training.precision import (
    PrecisionPlan,
    apply_tf32,
    check_compile,
    device_info,
    log_plan,
    new_grad_scaler,
    plan_precision,
)

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run cannot recover."""


@dataclass
class TrainResult:
    model: nn.Module  # the weights to predict with (averaged weights when EMA/SWA is on)
    metrics: dict[str, Any]  # final metrics: val/test accuracy and loss, params, seconds...
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was asked for, but no CUDA GPU is visible; use --device cpu"
        )
    return device


def _make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    # Fused kernels update all parameters in one launch on CUDA; on CPU foreach is the fast path.
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        betas=(cfg.momentum, 0.999),
        weight_decay=cfg.weight_decay,
        **fused,
    )


def _make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> LRScheduler:
    """A per-step schedule; epoch-valued settings are converted to steps."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=cfg.onecycle_pct_start
        )
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    rest = total - warmup
    if cfg.schedule == "cosine":
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=rest)
    elif cfg.schedule == "step":
        # Decays at multiples of step_epochs counted from the start of the run, warm-up
        # included (SequentialLR restarts the main schedule's count when the warm-up ends).
        period = cfg.step_epochs * steps_per_epoch
        main = LambdaLR(optimizer, lambda step: cfg.step_gamma ** ((warmup + step) // period))
    elif cfg.schedule == "cosine_restarts":
        main = CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg.restart_epochs * steps_per_epoch, T_mult=cfg.restart_mult
        )
    elif cfg.schedule == "wsd":
        # Warm-up, stable, decay (Hägele et al. 2024): at the rate until the last
        # decay_fraction of the run, then linearly to 0. While the rate is stable, the
        # accuracy a run would reach if it ended now is one short decay away, which is what
        # the decay branches of a search's rungs measure (see `_decay_branch`).
        decay_start = max(warmup, total - max(1, round(cfg.decay_fraction * total)))
        span = total - decay_start

        def wsd(step: int) -> float:
            at = warmup + step  # SequentialLR counts the main schedule from the warm-up's end
            return 1.0 if at < decay_start else max(0.0, (total - at) / span)

        main = LambdaLR(optimizer, wsd)
    else:
        main = LambdaLR(optimizer, lambda _: 1.0)
    if warmup <= 0:
        return main
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


class Lookahead:
    """Lookahead (Zhang et al., 2019): slow weights move `alpha` toward the fast weights
    every `k` optimizer steps, and the fast weights restart from them. torch has no
    Lookahead, so this keeps the slow copy beside any optimizer."""

    def __init__(self, params: list[torch.Tensor], k: int, alpha: float) -> None:
        self.params, self.k, self.alpha = params, k, alpha
        self.slow = [p.detach().clone() for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        if self.steps % self.k:
            return
        torch._foreach_lerp_(self.slow, [p.detach() for p in self.params], self.alpha)
        torch._foreach_copy_([p.data for p in self.params], self.slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch._foreach_copy_(self.slow, state["slow"])
        self.steps = state["steps"]


class EmaUpdate:
    """One EMA step of `averager` toward `model` per call (parameters and BatchNorm buffers).

    The decay ramps up as (1 + n) / (10 + n) toward `decay`, so that short runs (a few
    hundred steps, as in early search trials) are not stuck near the initial weights; the
    first step copies. The step count n stays on the device and nothing here reads it on
    the host: AveragedModel.update_parameters compares it with 0 and copies it to the
    device on every call, and either one makes the host wait for the GPU once a step.
    The tensor pairs are gathered once, so a training step does only the arithmetic.
    """

    def __init__(self, averager: swa_utils.AveragedModel, model: nn.Module, decay: float):
        averaged = itertools.chain(averager.module.parameters(), averager.module.buffers())
        current = itertools.chain(model.parameters(), model.buffers())
        pairs = list(zip(averaged, current, strict=True))
        self.floats = ([a for a, _ in pairs if a.is_floating_point()],
                       [c for a, c in pairs if a.is_floating_point()])  # fmt: skip
        # e.g. BatchNorm's num_batches_tracked: copied, not averaged
        self.counters = ([a for a, _ in pairs if not a.is_floating_point()],
                         [c for a, c in pairs if not a.is_floating_point()])  # fmt: skip
        self.n = averager.n_averaged
        self.decay = decay

    @torch.no_grad()
    def __call__(self) -> None:
        n = self.n
        d = torch.where(n == 0, 0.0, torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)).float()
        averaged, current = self.floats
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1.0 - d))
        if self.counters[0]:
            torch._foreach_copy_(*self.counters)
        n.add_(1)


def _make_averager(model: nn.Module, cfg: TrainConfig) -> swa_utils.AveragedModel | None:
    if cfg.weight_averaging == "none":
        return None
    if cfg.weight_averaging == "ema":
        # Updated by EmaUpdate every step, not by AveragedModel.update_parameters; its step
        # count lives beside the weights (AveragedModel keeps it on the CPU).
        averager = swa_utils.AveragedModel(model, use_buffers=True)
        averager.n_averaged = averager.n_averaged.to(next(model.parameters()).device)
        return averager
    return swa_utils.AveragedModel(model)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 1024,
    tta_flip: bool = False,
    device: torch.device | None = None,
    precision: str | PrecisionPlan = "auto",
    channels_last: bool = True,
) -> torch.Tensor:
    """Float32 logits (N, classes) for uint8 images (N, 3, 32, 32), in large batches, at
    `precision` (a TrainConfig's, chosen for `device` as training chose it, or a run's plan)."""
    device = device or next(model.parameters()).device
    plan = (
        precision
        if isinstance(precision, PrecisionPlan)
        else plan_precision(precision, device_info(device), channels_last=channels_last)
    )
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device, non_blocking=True))
        if plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with plan.autocast(device.type):
            logits = flip_tta_logits(model, x) if tta_flip else model(x)
        out.append(logits.float())
    model.train(was_training)
    if not out:
        return torch.empty(0, 0, device=device)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    data: ImageSet,
    cfg: TrainConfig,
    device: torch.device,
    plan: PrecisionPlan | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a labeled set, at the run's precision `plan` (by
    default the config's, chosen for `device`)."""
    logits = predict_logits(
        model,
        data.images,
        batch_size=cfg.eval_batch_size,
        tta_flip=cfg.tta_flip,
        device=device,
        precision=plan or cfg.precision,
        channels_last=cfg.channels_last,
    )
    labels = data.labels.to(device)
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


class TrainState:
    """Everything a run needs to continue exactly where it stopped (see `checkpoint`)."""

    def __init__(
        self,
        arch: ArchConfig,
        cfg: TrainConfig,
        device: torch.device,
        steps: int,
        plan: PrecisionPlan | None = None,
    ):
        self.arch, self.cfg, self.device = arch, cfg, device
        self.plan = plan or plan_precision(
            cfg.precision, device_info(device), channels_last=cfg.channels_last
        )
        self.params = count_params(arch)
        self.model = ResNet(arch).to(device)
        if self.plan.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = _make_optimizer(self.model, cfg, device)
        # fp16's loss scaler (None otherwise); its scale continues across resumes.
        self.scaler = new_grad_scaler(self.plan, device.type)
        self.scheduler = _make_scheduler(self.optimizer, cfg, steps)
        self.lookahead = (
            Lookahead(list(self.model.parameters()), cfg.lookahead_k, cfg.lookahead_alpha)
            if cfg.lookahead_k
            else None
        )
        self.averager = _make_averager(self.model, cfg)
        self.ema_update = (
            EmaUpdate(self.averager, self.model, cfg.ema_decay)
            if cfg.weight_averaging == "ema"
            else None
        )
        self.swa_scheduler = (
            swa_utils.SWALR(self.optimizer, swa_lr=cfg.swa_lr)
            if cfg.weight_averaging == "swa" and cfg.swa_lr > 0
            else None
        )
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0  # training seconds over all epochs, across resumes

    @property
    def averaging_started(self) -> bool:
        if self.averager is None:
            return False
        if self.cfg.weight_averaging == "ema":
            return True
        return self.epoch > self.swa_start_epoch

    @property
    def swa_start_epoch(self) -> int:
        return max(0, math.floor(self.cfg.swa_start * self.cfg.epochs))

    def inference_model(self) -> nn.Module:
        return self.averager.module if self.averaging_started else self.model

    def checkpoint(self) -> dict[str, Any]:
        """A dict of tensors and plain data, loadable with torch.load(weights_only=True)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "arch": self.arch.to_dict(),
            "train_config": self.cfg.to_dict(),
            "params": self.params,
            "seed": self.cfg.seed,
            "code_version": code_version(),
            "precision": self.plan.precision,  # as this device ran it ("auto" resolved)
            "tf32": self.plan.tf32,
            "model": self.model.state_dict(),
            # The averaged weights, when they are what predictions should use; else None.
            "inference_model": (
                self.averager.module.state_dict() if self.averaging_started else None
            ),
            "averager": self.averager.state_dict() if self.averager else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "swa_scheduler": self.swa_scheduler.state_dict() if self.swa_scheduler else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": {
                "generator": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            },
            "history": self.history,
            "elapsed": self.elapsed,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}")
        if ckpt["arch"] != self.arch.to_dict():
            raise ValueError("checkpoint was written for a different architecture")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.averager and ckpt["averager"] is not None:
            self.averager.load_state_dict(ckpt["averager"])
        if self.swa_scheduler and ckpt["swa_scheduler"] is not None:
            self.swa_scheduler.load_state_dict(ckpt["swa_scheduler"])
        if self.lookahead and ckpt["lookahead"] is not None:
            self.lookahead.load_state_dict(ckpt["lookahead"])
        # A run resumed at another precision (another GPU) starts a scaler of its own.
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.generator.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if self.device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.epoch = ckpt["epoch"]
        self.history = list(ckpt["history"])
        self.elapsed = float(ckpt.get("elapsed", 0.0))


EpochCallback = Callable[[dict[str, Any], TrainState], None]


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering one epoch; a trailing partial batch is dropped
    (unless it would be the only one) so every step has the same shape."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    for step in range(steps_per_epoch(n, batch_size)):
        yield order[step * batch_size : (step + 1) * batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def train(
    arch: ArchConfig,
    cfg: TrainConfig,
    splits: DataSplits,
    *,
    report: EpochCallback | None = None,
    device: str | torch.device = "auto",
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `arch` with `cfg` on `splits.train`; call `report(metrics, state)` every epoch.

    `resume` is a checkpoint dict from `TrainState.checkpoint()` (e.g. loaded with
    `training.checkpoint.load_checkpoint`); training continues from its epoch.
    """
    device = resolve_device(device)
    train_set = splits.train.to(device)
    # The validation images too live on the device for the whole run (evaluated every epoch).
    val_set = splits.val.to(device) if splits.val is not None and len(splits.val) else None
    if train_set.labels is None:
        raise ValueError("the training set has no labels")
    n = len(train_set)
    if n == 0:
        raise ValueError("the training set is empty")
    steps = steps_per_epoch(n, cfg.batch_size)
    num_classes = arch.num_classes

    info = device_info(device)
    plan = plan_precision(cfg.precision, info, channels_last=cfg.channels_last)
    if cfg.compile:
        check_compile(info)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        apply_tf32(plan)
    log_plan(plan, device)
    state = TrainState(arch, cfg, device, steps, plan)
    if resume is not None:
        state.load(resume)
    model = state.model
    cuda = device.type == "cuda"
    step_model: nn.Module = model
    compile_seconds = 0.0
    if cfg.compile:
        step_model = torch.compile(model)
        compile_seconds = _compile_before_training(step_model, model, train_set.images, cfg, plan)
    mix_epochs = math.floor(cfg.augment.mix_until * cfg.epochs)
    start_epoch = state.epoch

    while state.epoch < cfg.epochs:
        epoch = state.epoch  # 0-based index of the epoch being trained
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        skipped = torch.zeros((), device=device, dtype=torch.int64)  # steps fp16 skipped
        seen = 0
        in_swa = state.cfg.weight_averaging == "swa" and epoch >= state.swa_start_epoch
        for index in _batches(n, cfg.batch_size, state.generator):
            loss, logits, labels = _train_step(
                step_model, model, state.optimizer, train_set, index, cfg, state.generator,
                num_classes=num_classes, active_mix=epoch < mix_epochs, plan=plan,
                scaler=state.scaler, skipped=skipped,
            )  # fmt: skip
            if state.lookahead:
                state.lookahead.step()
            if in_swa and state.swa_scheduler:
                state.swa_scheduler.step()
            else:
                state.scheduler.step()
            if state.ema_update is not None:
                state.ema_update()
            loss_sum += loss * len(index)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(index)
        if in_swa:
            state.averager.update_parameters(model)

        train_loss = loss_sum.item() / seen  # the epoch's one host synchronisation
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"training loss became {train_loss} in epoch {epoch + 1}; lower the learning "
                f"rate (now {cfg.lr}) or enable gradient clipping"
            )
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        state.elapsed += seconds
        state.epoch = epoch + 1
        if cfg.weight_averaging == "swa" and state.averaging_started:
            _update_bn(state.averager, train_set, cfg, device)
        metrics: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / seen,
            "lr": state.optimizer.param_groups[0]["lr"],
            "images_per_sec": seen / seconds,
            "epoch_seconds": seconds,
            "train_seconds": state.elapsed,
            "params": state.params,
            "precision": plan.precision,
            # Optimizer steps the fp16 loss scaler skipped (inf/NaN gradients); 0 otherwise.
            "skipped_steps": int(skipped.item()),
        }
        if compile_seconds and epoch == start_epoch:
            metrics["compile_seconds"] = compile_seconds
        if val_set is not None:
            metrics["val_loss"], metrics["val_acc"] = evaluate(
                state.inference_model(), val_set, cfg, device, plan
            )
            # The main run's, every epoch (a rung's val_acc becomes its decay branch's): a
            # results file that fixes its columns at the first epoch has them too.
            metrics["stable_val_loss"] = metrics["val_loss"]
            metrics["stable_val_acc"] = metrics["val_acc"]
            if _branch_due(cfg, state.epoch, steps):
                branch = _decay_branch(state, train_set, val_set, epoch < mix_epochs)
                metrics.update(branch)
                state.elapsed += branch["decay_branch_seconds"]
                metrics["train_seconds"] = state.elapsed
        state.history.append(metrics)
        if report is not None:
            report(metrics, state)

    final_model = state.inference_model()
    final: dict[str, Any] = {
        "epochs": state.epoch,
        "params": state.params,
        "seconds": state.elapsed,
        "seed": cfg.seed,
        "compile_seconds": compile_seconds,
        "device": str(device),
        "device_name": info.describe(),
        "precision": plan.precision,
        "tf32": plan.tf32,
        # Over every epoch of the run, resumed ones included.
        "skipped_steps": sum(int(m.get("skipped_steps", 0)) for m in state.history),
        "code_version": code_version(),
    }
    if state.history:
        # The last epoch already evaluated these same weights on the validation split.
        last = state.history[-1]
        final.update(
            {k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in last}
        )
    if splits.test is not None and len(splits.test) and splits.test.labels is not None:
        final["test_loss"], final["test_acc"] = evaluate(
            final_model, splits.test, cfg, device, plan
        )
    return TrainResult(model=final_model, metrics=final, history=state.history)


def _train_step(
    step_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: ImageSet,
    index: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    *,
    num_classes: int,
    active_mix: bool,
    plan: PrecisionPlan,
    scaler: torch.amp.GradScaler | None,
    skipped: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch `index`: (loss, logits, labels), detached. With a
    loss `scaler` (fp16), a step it skips (inf/NaN gradients) adds 1 to `skipped`."""
    device = train_set.images.device
    images = augment_batch(train_set.images[index], cfg.augment, generator)
    x = normalize(images)
    if plan.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = train_set.labels[index]
    x, targets = mix_batch(x, labels, num_classes, cfg.augment, generator, active=active_mix)
    with plan.autocast(device.type):
        logits = step_model(x)
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        _clip_gradients(model, cfg)
        optimizer.step()
        return loss.detach(), logits.detach(), labels
    scaler.scale(loss).backward()
    if cfg.grad_clip_value > 0 or cfg.grad_clip_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        _clip_gradients(model, cfg)
    # The scale halves on a skipped step and never falls otherwise: comparing it before and
    # after, on the device, counts skips without a host sync (get_scale() would be one).
    before = scaler._get_scale_async().clone()
    scaler.step(optimizer)
    scaler.update()
    skipped += scaler._get_scale_async() < before
    return loss.detach(), logits.detach(), labels


def _clip_gradients(model: nn.Module, cfg: TrainConfig) -> None:
    if cfg.grad_clip_value > 0:
        nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip_value)
    if cfg.grad_clip_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm, foreach=True)


def _branch_due(cfg: TrainConfig, epoch: int, steps: int) -> bool:
    """Whether the epoch just trained (1-based) ends with a decay branch: it is one of
    `decay_eval_epochs`, not the last epoch, and (wsd) the main run has not begun its own
    decay, which already is what a branch would measure."""
    if epoch not in cfg.decay_eval_epochs or epoch >= cfg.epochs:
        return False
    if cfg.schedule == "wsd":
        total = cfg.epochs * steps
        return epoch * steps < total - max(1, round(cfg.decay_fraction * total))
    return True


def decay_branch_steps(cfg: TrainConfig, epoch: int, steps: int) -> int:
    """Optimizer steps of the decay branch after `epoch` epochs of `steps` steps."""
    return max(1, round(cfg.decay_fraction * epoch * steps))


def _decay_branch(
    state: TrainState, train_set: ImageSet, val_set: ImageSet, active_mix: bool
) -> dict[str, float]:
    """Train copies of the weights, optimizer and EMA for `decay_fraction` x the epochs so
    far, the rate falling linearly from its current value to 0, and evaluate them: the
    accuracy this run would reach if its schedule ended here. The main run is untouched:
    the branch draws from its own generator and forks torch's global one (dropout), so a run
    with branches trains exactly the weights of one without. Lookahead and SWA are not
    carried into the branch (the search's spaces use neither)."""
    cfg, device = state.cfg, state.device
    started = time.perf_counter()
    steps = steps_per_epoch(len(train_set), cfg.batch_size)
    total = decay_branch_steps(cfg, state.epoch, steps)
    model = copy.deepcopy(state.model)
    optimizer = _make_optimizer(model, cfg, device)
    optimizer.load_state_dict(copy.deepcopy(state.optimizer.state_dict()))
    peaks = [group["lr"] for group in state.optimizer.param_groups]
    averager = copy.deepcopy(state.averager) if state.ema_update is not None else None
    ema = EmaUpdate(averager, model, cfg.ema_decay) if averager is not None else None
    scaler = new_grad_scaler(state.plan, device.type)
    if scaler is not None:  # the branch continues the main run's loss scale, on its own
        scaler.load_state_dict(state.scaler.state_dict())
    skipped = torch.zeros((), device=device, dtype=torch.int64)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed * 1_000_003 + state.epoch)
    forked = [device] if device.type == "cuda" else []
    done = 0
    with torch.random.fork_rng(devices=forked):
        model.train()
        while done < total:
            for index in _batches(len(train_set), cfg.batch_size, generator):
                for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                    group["lr"] = peak * (total - done) / total
                _train_step(
                    model, model, optimizer, train_set, index, cfg, generator,
                    num_classes=state.arch.num_classes, active_mix=active_mix,
                    plan=state.plan, scaler=scaler, skipped=skipped,
                )  # fmt: skip
                if ema is not None:
                    ema()
                done += 1
                if done == total:
                    break
    loss, acc = evaluate(
        averager.module if averager is not None else model, val_set, cfg, device, state.plan
    )
    return {
        "val_loss": loss,
        "val_acc": acc,
        "decay_branch_epochs": total / steps,
        "decay_branch_skipped_steps": int(skipped.item()),
        "decay_branch_seconds": time.perf_counter() - started,
    }


def _compile_before_training(
    step_model: nn.Module,
    model: nn.Module,
    images: torch.Tensor,
    cfg: TrainConfig,
    plan: PrecisionPlan,
) -> float:
    """Seconds torch.compile took, paid here on one training batch so that no epoch time
    contains it. The batch's effects are undone: weights and BatchNorm statistics are
    restored, gradients dropped, and the random state (dropout) is forked."""
    started = time.perf_counter()
    device = images.device
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = normalize(images[: min(cfg.batch_size, len(images))])
    if plan.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        with plan.autocast(device.type):
            logits = step_model(x)
        logits.float().sum().backward()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


@torch.no_grad()
def _update_bn(
    averager: swa_utils.AveragedModel, data: ImageSet, cfg: TrainConfig, device: torch.device
) -> None:
    """Recompute BatchNorm statistics for SWA weights (torch's update_bn over plain batches)."""
    batches = (
        normalize(data.images[i : i + cfg.eval_batch_size])
        for i in range(0, len(data), cfg.eval_batch_size)
    )
    # update_bn resets the running stats and runs forward passes; it restores train/eval mode.
    swa_utils.update_bn(batches, averager, device=device)
