import json

import pytest
import torch

from models import get_arch
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.loop import predict_logits
from training.recipes import get_recipe
from tune.retrain import concat_sets, retrain

from .conftest import interrupted_after_epoch, separable_set


def test_retrain_resumes_from_its_own_checkpoints(tmp_path, monkeypatch, capsys):
    arch = get_arch("tiny_resnet")
    cfg = get_recipe("smoke", epochs=2, batch_size=32)
    train, test = separable_set(128), separable_set(40, seed=1)
    out = tmp_path / "final"

    with interrupted_after_epoch(monkeypatch, 1):
        retrain(arch, cfg, train, test, out, seeds=[0, 1], device="cpu")
    assert (out / "seed_0" / "checkpoint.pt").exists()
    assert not (out / "seed_0" / "metrics.json").exists()

    metrics = retrain(arch, cfg, train, test, out, seeds=[0, 1], device="cpu")
    assert "resuming after epoch 1" in capsys.readouterr().out
    seed0 = json.loads((out / "seed_0" / "metrics.json").read_text())
    assert [h["epoch"] for h in seed0["history"]] == [1, 2]
    assert len(metrics["test_acc"]) == 2 and metrics["epochs"] == 2
    assert metrics["test_acc_mean"] == pytest.approx(sum(metrics["test_acc"]) / 2)
    assert metrics["params"] == 5266 and "code_version" in metrics

    # Tested both ways whatever the recipe says (smoke: no TTA), so that a retrain compares
    # with another under the same test-time augmentation.
    assert metrics["test_acc_plain"] == pytest.approx(metrics["test_acc"])
    for seed, acc in zip((0, 1), metrics["test_acc_tta"], strict=True):
        model = model_from_checkpoint(load_checkpoint(out / f"seed_{seed}" / "checkpoint.pt"))
        logits = predict_logits(model, test.images, tta_flip=True, device=torch.device("cpu"))
        assert acc == pytest.approx((logits.argmax(1) == test.labels).float().mean().item())
    assert metrics["test_acc_tta_mean"] == pytest.approx(sum(metrics["test_acc_tta"]) / 2)
    assert json.loads((out / "metrics.json").read_text())["test_acc_tta"] == metrics["test_acc_tta"]

    # A third call finds both seeds finished and trains nothing.
    again = retrain(arch, cfg, train, test, out, seeds=[0, 1], device="cpu")
    assert capsys.readouterr().out.count("already finished") == 2
    assert again["test_acc"] == metrics["test_acc"]


def test_concat_sets_keeps_everything():
    a, b = separable_set(10), separable_set(6, seed=2)
    both = concat_sets(a, b)
    assert len(both) == 16
    assert torch.equal(both.images[10:], b.images) and torch.equal(both.labels[:10], a.labels)
