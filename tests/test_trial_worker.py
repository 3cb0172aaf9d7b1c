"""What a reused trial worker keeps and what it resets (tune.trainable), without Ray."""

import gc
import random
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from models import get_arch
from training.checkpoint import load_checkpoint
from training.data import DataSplits
from training.loop import TrainState
from training.recipes import get_recipe
from tune.trainable import (
    CHECKPOINT_FILE,
    EpochReporter,
    TrialData,
    reset_worker,
    trial_device,
    worker_data,
)

from .conftest import separable_set

CPU = torch.device("cpu")


def test_the_data_is_fetched_once_per_worker_and_replaced_when_it_changes():
    stored = {"a": DataSplits(train=separable_set(20), val=separable_set(10, seed=1))}
    fetched = []

    def fetch(ref):
        fetched.append(ref)
        return stored[ref]

    first = worker_data(TrialData(ref="a", key="a"), CPU, fetch)
    again = worker_data(TrialData(ref="a", key="a"), CPU, fetch)
    assert fetched == ["a"] and again is first
    assert torch.equal(first.train.images, stored["a"].train.images)
    assert len(first.val) == 10

    stored["b"] = DataSplits(train=separable_set(30, seed=2))
    old = weakref.ref(first.train.images)
    del first, again, stored["a"]
    other = worker_data(TrialData(ref="b", key="b"), CPU, fetch)
    gc.collect()
    assert fetched == ["a", "b"] and len(other.train) == 30 and other.val is None
    assert old() is None  # the previous data was let go, not kept beside the new


def test_a_trial_given_a_gpu_that_sees_none_fails_at_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trial_device(False) == CPU
    with pytest.raises(RuntimeError, match="sees no CUDA device.*--gpus-per-trial 0"):
        trial_device(True)


def test_reset_worker_seeds_every_generator_alike():
    draws = []
    for _ in range(2):
        reset_worker(7, CPU)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
        random.random(), np.random.rand(), torch.rand(3)  # a trial moves them on
    assert draws[0] == draws[1]


@pytest.mark.parametrize(
    ("every", "expected"),
    [(25.0, [3, 6, 8]), (0.0, [1, 2, 3, 4, 5, 6, 7, 8]), (1000.0, [8])],
)
def test_a_trial_checkpoints_by_time_and_after_its_last_epoch(tmp_path, every, expected):
    """Epochs of 10 s on a fake clock: a checkpoint once `every` seconds have passed since the
    last one (or the start), and always after the last epoch."""
    now = [0.0]
    cfg = get_recipe("default", epochs=8, batch_size=8, val_size=0)
    state = TrainState(get_arch("tiny_resnet"), cfg, CPU, steps=1)
    sent = []

    def send(metrics, checkpoint=None):
        saved = None
        if checkpoint is not None:
            saved = load_checkpoint(Path(checkpoint.path) / CHECKPOINT_FILE)["epoch"]
        sent.append((metrics["epoch"], saved, metrics["report_seconds"], metrics["node"]))

    writer = SummaryWriter(str(tmp_path / "tb"))
    reporter = EpochReporter(
        writer,
        send,
        last_epoch=8,
        checkpoint_every_s=every,
        extra={"node": "n1"},
        clock=lambda: now[0],
    )
    for epoch in range(1, 9):
        now[0] += 10.0
        state.epoch = epoch
        metrics = {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1,
                   "images_per_sec": 100.0, "val_loss": 1.0, "val_acc": 0.5}  # fmt: skip
        reporter(metrics, state)
    writer.close()
    assert [e for e, saved, _, _ in sent if saved is not None] == expected
    assert all(saved in (None, e) for e, saved, _, _ in sent)  # each checkpoint is its epoch's
    assert [e for e, *_ in sent] == list(range(1, 9)) and {n for *_, n in sent} == {"n1"}
    # Each report carries the time spent reporting before it, which only grows.
    times = [t for _, _, t, _ in sent]
    assert times[0] == 0.0 and times == sorted(times) and reporter.seconds >= times[-1]
    assert reporter.checkpoints == len(expected)


def test_the_retrain_fails_without_its_gpu_and_predicts_with_the_recipes_precision(monkeypatch):
    from tune import retrain

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="retrain was given a GPU.*--gpus-per-trial 0"):
        retrain.checked_device("cuda")
    assert retrain.checked_device("cpu") == CPU

    seen = []

    def predict(model, images, **kwargs):
        seen.append((kwargs["precision"], kwargs["channels_last"], kwargs["tta_flip"]))
        return torch.zeros(len(images), 10)

    monkeypatch.setattr(retrain, "predict_logits", predict)
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    expected = []
    for precision, channels_last in (("auto", True), ("fp32", False), ("fp16", False)):
        cfg = get_recipe("default").replace(precision=precision, channels_last=channels_last)
        for tta in (True, False):  # tested both ways, always at the recipe's precision
            retrain._logits([torch.nn.Identity()], images, cfg, CPU, tta)
            expected.append((precision, channels_last, tta))
    assert seen == expected


@pytest.mark.slow
def test_a_trial_in_a_reused_worker_trains_as_it_would_in_a_fresh_process(tmp_path):
    """Trials reuse their worker process (Ray's reuse_actors): a trial that follows another
    in the same process (its data already on the device, every generator moved on, the
    previous model and optimizer just let go) trains exactly as in a process of its own."""
    import json
    import subprocess
    import sys

    from search_spaces import get_space
    from tune.trainable import TrialSettings

    from .trialrun import ROOT, run_trial_here, small_splits, trained_values, trial_config

    first, second = get_space("efficient_resnet").starting_points[:3:2]  # mixup in the second
    earlier = trial_config("efficient_resnet", dict(first), seed=3, rung_epochs=[2])
    point = {**second, "erasing": True, "erasing_p": 0.5}
    config = trial_config("efficient_resnet", point, seed=11, rung_epochs=[2])
    settings = TrialSettings(max_epochs=4, max_batch_size=32, use_gpu=False, threads=1)
    splits = small_splits()
    run_trial_here(earlier, splits, settings, tmp_path / "earlier")
    reused = trained_values(run_trial_here(config, splits, settings, tmp_path / "reused"))

    fresh = subprocess.run(
        [sys.executable, "-m", "tests.trialrun", json.dumps([config, 4]), str(tmp_path / "fresh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert [m["epoch"] for m in reused] == [1, 2, 3, 4] and "stable_val_acc" in reused[1]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == reused
