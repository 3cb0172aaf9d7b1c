import json
import pickle
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.optim import swa_utils

from models import ResNet, get_arch
from training import predict as predict_cli
from training import train as train_cli
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.data import DataSplits, load_images
from training.loop import EmaUpdate, NonFiniteLossError, train
from training.recipes import get_recipe, list_recipes

from .conftest import (
    interrupted_after_epoch,
    separable_images,
    separable_set,
    write_python_batches,
)
from .conftest import (
    scheduled_lrs as _lrs,
)

TINY = get_arch("tiny_resnet")


def quick_cfg(**changes):
    return get_recipe("smoke", **changes)


def test_loop_learns_a_separable_set():
    splits = DataSplits(train=separable_set(400, seed=0), val=separable_set(100, seed=1))
    seen = []
    result = train(
        TINY,
        quick_cfg(epochs=4, batch_size=32, lr=0.1),
        splits,
        report=lambda m, s: seen.append(m),
        device="cpu",
    )
    assert [m["epoch"] for m in seen] == [1, 2, 3, 4]
    assert result.metrics["val_acc"] >= 0.9
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]
    assert all(m["images_per_sec"] > 0 and m["params"] == 5266 for m in seen)


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": "adamw", "lr": 3e-3, "schedule": "onecycle", "label_smoothing": 0.1},
        {"schedule": "step", "step_epochs": 1, "grad_clip_norm": 1.0, "weight_averaging": "ema"},
        {
            "schedule": "cosine_restarts",
            "restart_epochs": 1,
            "lookahead_k": 3,
            "grad_clip_value": 0.1,
            "weight_averaging": "swa",
            "swa_start": 0.5,
            "swa_lr": 0.01,
        },
        {
            "warmup_epochs": 1.0,
            "augment.mixup_p": 0.5,
            "augment.cutmix_p": 0.5,
            "augment.erasing_p": 0.5,
            "augment.cutout_size": 8,
            "augment.brightness": 0.2,
            "augment.auto_augment": "trivialaugment",
            "tta_flip": True,
        },
    ],
)
def test_every_optimizer_schedule_and_averaging_runs(changes):
    splits = DataSplits(train=separable_set(128), val=separable_set(40, seed=1))
    result = train(TINY, quick_cfg(epochs=2, batch_size=32, **changes), splits, device="cpu")
    assert result.metrics["epochs"] == 2
    assert 0.0 <= result.metrics["val_acc"] <= 1.0
    assert np.isfinite(result.metrics["val_loss"])


def test_every_recipe_builds_a_valid_schedule():
    splits = DataSplits(train=separable_set(40))
    for name in list_recipes():
        cfg = get_recipe(
            name, epochs=1, batch_size=20, compile=False
        )  # compiling takes ~30 s on CPU
        assert train(TINY, cfg, splits, device="cpu").metrics["epochs"] == 1


def _weights(state_dict):
    return {k: v.clone() for k, v in state_dict.items()}


def test_resume_continues_exactly():
    splits = DataSplits(train=separable_set(96), val=separable_set(20, seed=1))
    cfg = quick_cfg(
        epochs=2,
        batch_size=32,
        lookahead_k=2,
        weight_averaging="ema",
        **{"augment.cutout_size": 8, "augment.mixup_p": 0.5},
        label_smoothing=0.1,
    )
    straight = train(TINY, cfg, splits, device="cpu")

    saved = {}

    def keep_first(metrics, state):
        if metrics["epoch"] == 1:
            saved["ckpt"] = state.checkpoint()
            raise KeyboardInterrupt  # stop as an interrupted run would

    with pytest.raises(KeyboardInterrupt):
        train(TINY, cfg, splits, report=keep_first, device="cpu")
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    resumed = train(TINY, cfg, splits, device="cpu", resume=saved["ckpt"])

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["train_loss"] == straight.history[1]["train_loss"]


def test_ema_follows_the_warm_up_formula_and_copies_integer_buffers():
    net = ResNet(TINY)
    averager = swa_utils.AveragedModel(net, use_buffers=True)
    expected = {k: v.clone().float() for k, v in averager.module.state_dict().items()}
    decay = 0.5  # reached after a few steps, so the clamp is exercised too
    update_ema = EmaUpdate(averager, net, decay)
    for step in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.stem[1].num_batches_tracked += 3
        d = 0.0 if step == 0 else min((1 + step) / (10 + step), decay)
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v
            else:
                expected[k] = v.clone().float()
        update_ema()
    got = averager.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].float(), v, msg=k)
    assert int(averager.n_averaged) == 6


@pytest.mark.slow
def test_compile_time_is_paid_before_the_first_epoch_and_changes_nothing():
    splits = DataSplits(train=separable_set(64), val=separable_set(20, seed=1))
    # fp32: compiled and eager bf16 kernels round differently
    cfg = quick_cfg(epochs=1, batch_size=32, precision="fp32", **{"augment.cutout_size": 8})
    eager = train(TINY, cfg, splits, device="cpu")
    compiled = train(TINY, cfg.replace(compile=True), splits, device="cpu")
    assert compiled.metrics["compile_seconds"] > 0 and eager.metrics["compile_seconds"] == 0
    assert compiled.history[0]["compile_seconds"] == compiled.metrics["compile_seconds"]
    # The warm-up batch left no trace: same weights and BatchNorm statistics as eager,
    # up to the order in which compiled kernels add.
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-4, rtol=1e-4, msg=key)
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"])


def test_nan_loss_stops_with_a_clear_error():
    splits = DataSplits(train=separable_set(64))
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train(TINY, quick_cfg(epochs=2, batch_size=32, lr=1e30, momentum=0.0), splits, device="cpu")


def test_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"arch": {}, "model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ([{"blocks": 1, "channels": 200_000, "stride": 1}], "parameters, more than"),
        ([{"blocks": 100_000, "channels": 8, "stride": 1}], "residual blocks, more than"),
        ([{"blocks": 1, "channels": -5, "stride": 1}], "not valid"),
    ],
)
def test_a_checkpoint_claiming_a_huge_network_is_refused_before_it_is_built(
    tmp_path, capsys, stages, expected
):
    """A few-kilobyte checkpoint whose architecture would need terabytes: refused at once, with
    nothing large allocated."""
    arch = {**TINY.to_dict(), "stages": stages}
    path = tmp_path / "huge.pt"
    torch.save({"arch": arch, "model": {}, "train_config": quick_cfg().to_dict()}, path)
    unlabeled = tmp_path / "u.pkl"
    _write_unlabeled(unlabeled, 4, hwc=True)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        rc = predict_cli.main(
            ["--checkpoint", str(path), "--input", str(unlabeled), "--out", str(tmp_path / "p.csv")]
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused in milliseconds, before anything is built: the memory peak says nothing large
    # was; 60 s bounds a hang (building 100,000 blocks one by one), with room for a loaded
    # machine.
    assert rc == 2 and time.perf_counter() - started < 60
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB"
    err = capsys.readouterr().err
    assert "huge.pt" in err and expected in err
    assert not (tmp_path / "p.csv").exists()


def _write_unlabeled(path, n, hwc):
    images, _ = separable_images(n, seed=3)
    data = images.transpose(0, 2, 3, 1) if hwc else images.reshape(n, -1)
    ids = np.arange(1000, 1000 + n)
    path.write_bytes(pickle.dumps({b"data": data, b"ids": ids}))
    return ids


def test_cli_train_then_predict_round_trip(tmp_path, cifar_batches, capsys):
    out = tmp_path / "run"
    rc = train_cli.main(
        [
            "--model",
            "tiny_resnet",
            "--recipe",
            "smoke",
            "--data",
            str(cifar_batches),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--subset",
            "160",
            "--device",
            "cpu",
            "--seed",
            "1",
            "--batch-size",
            "16",
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "val_acc",
        "test_acc",
        "params",
        "epochs",
        "seconds",
        "arch",
        "train_config",
        "seed",
        "code_version",
    ):
        assert key in metrics
    assert metrics["epochs"] == 3 and metrics["params"] == 5266 and metrics["seed"] == 1
    assert metrics["sizes"] == {"train": 160, "val": 40, "test": 100}
    assert "epoch   3/3" in capsys.readouterr().out

    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 3 and ckpt["params"] == 5266 and ckpt["seed"] == 1
    assert model_from_checkpoint(ckpt).arch == get_arch("tiny_resnet")

    unlabeled = tmp_path / "cifar_test_nolabel.pkl"
    ids = _write_unlabeled(unlabeled, 30, hwc=True)
    csv = tmp_path / "predictions.csv"
    assert (
        predict_cli.main(
            [
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--input",
                str(unlabeled),
                "--out",
                str(csv),
                "--tta",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["ID", "Labels"]
    assert frame["ID"].tolist() == ids.tolist()
    assert frame["Labels"].between(0, 9).all()

    csv2 = tmp_path / "labeled.csv"
    assert (
        predict_cli.main(
            [
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--input",
                str(cifar_batches),
                "--out",
                str(csv2),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "accuracy" in capsys.readouterr().out
    assert len(pd.read_csv(csv2)) == 100


def test_cli_resume_finishes_the_run(tmp_path, cifar_batches):
    out = tmp_path / "run"
    common = [
        "--model",
        "tiny_resnet",
        "--recipe",
        "smoke",
        "--data",
        str(cifar_batches),
        "--out",
        str(out),
        "--subset",
        "80",
        "--device",
        "cpu",
        "--batch-size",
        "16",
    ]
    assert train_cli.main([*common, "--epochs", "1"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    # A resumed run keeps the checkpoint's configs, so it is already finished:
    assert train_cli.main([*common, "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


def test_a_run_interrupted_midway_resumes_on_its_own_split_exactly(
    tmp_path, cifar_batches, monkeypatch
):
    """Interrupted after epoch 1 of 3 and resumed through the real checkpoint file with no
    --seed or --subset: the run continues on the split it started with and ends with the
    same weights and metrics as the same run uninterrupted."""
    common = ["--model", "tiny_resnet", "--recipe", "smoke", "--data", str(cifar_batches),
              "--device", "cpu", "--batch-size", "16", "--epochs", "3"]  # fmt: skip
    split = ["--seed", "3", "--subset", "120"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train_cli.main([*common, *split, "--out", str(straight)]) == 0

    with interrupted_after_epoch(monkeypatch, 1):
        train_cli.main([*common, *split, "--out", str(broken)])
    assert load_checkpoint(broken / "checkpoint.pt")["epoch"] == 1
    torch.manual_seed(99)  # disturb the global RNG: the resume restores its own
    assert train_cli.main([*common, "--out", str(broken), "--resume"]) == 0

    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(broken / "checkpoint.pt")
    assert b["split"]["seed"] == 3 and b["split"]["subset"] == 120
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((broken / "metrics.json").read_text())
    for key in ("val_acc", "test_acc", "train_loss", "sizes"):
        assert ma[key] == mb[key], key


def test_a_resume_on_other_data_or_another_split_is_refused(tmp_path, cifar_batches, capsys):
    out = tmp_path / "run"
    common = ["--model", "tiny_resnet", "--recipe", "smoke", "--device", "cpu",
              "--batch-size", "16", "--out", str(out)]  # fmt: skip
    assert train_cli.main([*common, "--data", str(cifar_batches), "--epochs", "2",
                           "--subset", "80", "--seed", "2"]) == 0  # fmt: skip
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt["epoch"] = 1  # as if it had stopped after its first epoch
    from training.checkpoint import save_checkpoint

    save_checkpoint(out / "checkpoint.pt", ckpt)
    before = (out / "checkpoint.pt").read_bytes()

    other = write_python_batches(tmp_path / "other", n_train=150, n_test=50)
    capsys.readouterr()
    assert train_cli.main([*common, "--data", str(other), "--resume"]) == 2
    assert "is not the data" in capsys.readouterr().err
    assert train_cli.main([*common, "--data", str(cifar_batches), "--resume", "--seed", "5"]) == 2
    assert "trained with --seed 2, not 5" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing trained, nothing written


def test_cli_errors_are_clear(tmp_path, capsys):
    out = tmp_path / "o"
    assert train_cli.main(["--model", "nope", "--out", str(out)]) == 2
    assert "efficient_resnet" in capsys.readouterr().err
    assert train_cli.main(["--recipe", "nope", "--out", str(out)]) == 2
    assert "smoke" in capsys.readouterr().err
    assert train_cli.main(["--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    assert train_cli.main(["--epochs", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not out.exists()  # no output folder, let alone files


def test_cap_batch_size_scales_the_learning_rate_with_it():
    from training.config import cap_batch_size

    cfg = get_recipe("default")  # batch 512, lr 0.4
    capped = cap_batch_size(cfg, 128)
    assert (capped.batch_size, capped.lr) == (128, pytest.approx(0.2))  # 0.4 * sqrt(1/4)
    assert cap_batch_size(cfg, 1024) is cfg and cap_batch_size(cfg, None) is cfg


def test_with_epochs_keeps_the_schedule_shape():
    cfg = get_recipe("resnet_dropout_3x4")  # 150 epochs, step every 30
    short = cfg.with_epochs(15)
    assert (short.epochs, short.step_epochs) == (15, 3)
    restarts = get_recipe("se_mish_resnet").with_epochs(20)  # 200 epochs, T_0 10
    assert restarts.restart_epochs == 1
    default = get_recipe("default")  # 40 epochs, 2 of warm-up
    assert default.with_epochs(4).warmup_epochs == pytest.approx(0.2)  # a twentieth, as before


@pytest.mark.parametrize("warmup", [0.0, 1.0, 1.5])
def test_step_decays_fall_on_their_epochs_whatever_the_warm_up(warmup):
    cfg = quick_cfg(
        epochs=6, lr=1.0, schedule="step", step_epochs=2, step_gamma=0.1, warmup_epochs=warmup
    )
    lrs = _lrs(cfg, steps_per_epoch=10)
    # x0.1 at the start of epochs 2 and 4 (steps 20 and 40), counted from the run's start.
    assert lrs[19] > 0.5 and lrs[20] == pytest.approx(0.1) and lrs[39] == pytest.approx(0.1)
    assert lrs[40] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01)
    warm = round(warmup * 10)
    assert all(a < b for a, b in zip(lrs[:warm], lrs[1 : warm + 1], strict=False))  # ramping


def test_a_batch_over_a_tenth_of_the_images_is_capped_and_said(tmp_path, cifar_batches, capsys):
    out = tmp_path / "run"
    argv = ["--model", "tiny_resnet", "--recipe", "default", "--data", str(cifar_batches),
            "--out", str(out), "--epochs", "1", "--subset", "160", "--device", "cpu"]  # fmt: skip
    assert train_cli.main(argv) == 0
    assert "batch size 512 is more than a tenth of the 160 training images: 16 per step" in (
        capsys.readouterr().out
    )
    saved = load_checkpoint(out / "checkpoint.pt")["train_config"]
    assert saved["batch_size"] == 16 and saved["lr"] == pytest.approx(0.4 * (16 / 512) ** 0.5)


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg.tar.xz"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="the JPEG CIFAR-10 beside the repository")
def test_a_short_run_of_the_default_recipe_learns_on_real_images(tmp_path, capsys):
    """The smallest registered model, the default recipe, 2,000 real CIFAR-10 images and 3
    epochs: the recipe's schedule shrinks to fit (warm-up included) and the batch is capped
    to the data, so the run learns (at least 25% on 2,000 test images; 10% is chance)."""
    out = tmp_path / "run"
    argv = ["--model", "tiny_resnet", "--recipe", "default", "--data", str(SHARED_CIFAR),
            "--out", str(out), "--subset", "2000", "--epochs", "3", "--device", "cpu"]  # fmt: skip
    assert train_cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"]["test"] == 2000 and metrics["params"] == 5266
    assert metrics["test_acc"] >= 0.25, metrics["test_acc"]


@pytest.mark.parametrize("recipe_tta", [True, False])
def test_predict_uses_the_recipes_test_time_flip_unless_told_otherwise(tmp_path, recipe_tta):
    """Predictions come from the model as it was tested: with the recipe's flip TTA by
    default, without it under --no-tta (and with it under --tta)."""
    from training.predictions import predict_labels
    from training.run import run_training

    out = tmp_path / "run"
    out.mkdir()
    cfg = quick_cfg(epochs=1, batch_size=32, tta_flip=recipe_tta)
    run_training(TINY, cfg, DataSplits(train=separable_set(64)), out, device="cpu")
    unlabeled = tmp_path / "u.pkl"
    _write_unlabeled(unlabeled, 40, hwc=True)
    model = model_from_checkpoint(load_checkpoint(out / "checkpoint.pt"))
    images = load_images(unlabeled)
    for flag, tta in ((None, recipe_tta), ("--tta", True), ("--no-tta", False)):
        csv = tmp_path / f"p{flag}.csv"
        argv = ["--checkpoint", str(out / "checkpoint.pt"), "--input", str(unlabeled)]
        assert predict_cli.main([*argv, "--out", str(csv), *([flag] if flag else [])]) == 0
        meta = json.loads(csv.with_suffix(".csv.json").read_text())
        assert meta["tta_flip"] is tta, flag
        expected = predict_labels(model, images, tta_flip=tta, device=torch.device("cpu"))
        assert pd.read_csv(csv)["Labels"].tolist() == expected.tolist(), flag
