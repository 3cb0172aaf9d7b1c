import json

import pytest
import torch

from models import get_arch
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

    # A third call finds both seeds finished and trains nothing.
    again = retrain(arch, cfg, train, test, out, seeds=[0, 1], device="cpu")
    assert capsys.readouterr().out.count("already finished") == 2
    assert again["test_acc"] == metrics["test_acc"]


def test_concat_sets_keeps_everything():
    a, b = separable_set(10), separable_set(6, seed=2)
    both = concat_sets(a, b)
    assert len(both) == 16
    assert torch.equal(both.images[10:], b.images) and torch.equal(both.labels[:10], a.labels)
