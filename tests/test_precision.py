"""Precision by device: the policy (with stand-in device descriptions, no GPU here), fp16 with
its loss scaler end to end on the CPU, the GPU checks and the torch.compile refusal."""

import contextlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models import get_arch
from training import loop
from training import train as train_cli
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.data import DataSplits
from training.loop import NonFiniteLossError, TrainState, train
from training.precision import (
    DeviceInfo,
    UnsupportedGpuError,
    apply_tf32,
    arch_runs_on,
    check_compile,
    check_gpu_supported,
    plan_precision,
)
from training.recipes import get_recipe

from .conftest import interrupted_after_epoch, separable_set

TINY = get_arch("tiny_resnet")
CPU = torch.device("cpu")
TORCH_215_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def gpu(name: str, capability: tuple[int, int]) -> DeviceInfo:
    return DeviceInfo(type="cuda", name=name, capability=capability, index=0)


# The GPUs the users are given, and what `auto` must train them at.
@pytest.mark.parametrize(
    ("device", "precision", "tf32"),
    [
        (gpu("NVIDIA H200", (9, 0)), "bf16", True),
        (gpu("NVIDIA H100 80GB HBM3", (9, 0)), "bf16", True),
        (gpu("NVIDIA A100-SXM4-40GB", (8, 0)), "bf16", True),
        (gpu("NVIDIA L4", (8, 9)), "bf16", True),
        (gpu("NVIDIA GeForce RTX 3090", (8, 6)), "bf16", True),
        (gpu("Tesla T4", (7, 5)), "fp16", False),
        (gpu("Quadro RTX 8000", (7, 5)), "fp16", False),
        (gpu("Tesla V100-SXM2-16GB", (7, 0)), "fp16", False),
        (gpu("Tesla P100-PCIE-16GB", (6, 0)), "fp32", False),
        (gpu("Tesla K80", (3, 7)), "fp32", False),
        (DeviceInfo(type="cpu", name="cpu", cpu_fast_bf16=True), "bf16", False),
        (DeviceInfo(type="cpu", name="cpu", cpu_fast_bf16=False), "fp32", False),
    ],
)
def test_auto_picks_the_precision_of_each_device(device, precision, tf32, monkeypatch):
    # bf16 can be emulated on a T4 or V100, and torch says it is "supported" there: the
    # policy must not ask.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    plan = plan_precision("auto", device)
    assert (plan.precision, plan.tf32, plan.warning) == (precision, tf32, "")
    assert plan.loss_scaling == (precision == "fp16")
    assert plan.autocast_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    # channels_last on a GPU, and on a CPU where bf16 runs (measured faster together)
    assert plan.channels_last == (device.type == "cuda" or precision == "bf16")
    assert not plan_precision("auto", device, channels_last=False).channels_last


def test_an_explicit_precision_is_kept_with_a_warning_where_it_is_slow():
    t4, a100 = gpu("Tesla T4", (7, 5)), gpu("NVIDIA A100", (8, 0))
    slow_cpu = DeviceInfo(type="cpu", name="cpu", cpu_fast_bf16=False)
    bf16_on_t4 = plan_precision("bf16", t4)
    assert bf16_on_t4.precision == "bf16" and "emulated" in bf16_on_t4.warning
    assert "auto picks fp16" in bf16_on_t4.warning
    assert plan_precision("fp32", a100).precision == "fp32"
    assert plan_precision("fp32", a100).warning == ""
    assert plan_precision("fp16", a100).loss_scaling
    assert "slower" in plan_precision("fp16", slow_cpu).warning
    assert "fp32 here" in plan_precision("bf16", slow_cpu).warning
    with pytest.raises(ValueError, match="'fp8'.*--precision auto"):
        plan_precision("fp8", a100)


def test_configs_from_before_precision_keep_their_meaning():
    assert TrainConfig.from_dict({"bf16": True}).precision == "auto"
    assert TrainConfig.from_dict({"bf16": False}).precision == "fp32"
    assert TrainConfig.from_dict({"precision": "fp16"}).precision == "fp16"
    assert TrainConfig.from_dict(TrainConfig(precision="bf16").to_dict()).precision == "bf16"
    with pytest.raises(ValueError, match="precision='half'"):
        TrainConfig(precision="half")


def test_tf32_is_set_with_flags_that_every_reader_can_read():
    # torch.compile reads cuda.matmul.allow_tf32 and cudnn.allow_tf32; after a mix of torch's
    # two TF32 APIs, reading them raises.
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        for tf32 in (True, False, True):
            plan = plan_precision("auto", gpu("A100", (8, 0)) if tf32 else gpu("T4", (7, 5)))
            apply_tf32(plan)
            assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
            assert torch.backends.cuda.matmul.allow_tf32 == tf32
            assert torch.backends.cudnn.allow_tf32 == tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def tiny_splits(n: int = 40) -> DataSplits:
    return DataSplits(train=separable_set(n), val=separable_set(10, seed=1))


def fp16_cfg(**changes) -> TrainConfig:
    # fp16 convolutions' backward on a CPU is slow (no fast kernels): a few small steps.
    return get_recipe("smoke", **{"epochs": 2, "batch_size": 10, "lr": 0.05, "precision": "fp16",
                                  **changes})  # fmt: skip


def high_scale(monkeypatch, init_scale: float = 2.0**40) -> None:
    """Start fp16's loss scaler so high that the first steps' gradients overflow, as they
    do on a GPU when a run starts: those steps are skipped until the scale fits."""
    real = loop.new_grad_scaler

    def scaler(plan, device_type):
        made = real(plan, device_type)
        if made is not None:
            made.load_state_dict({**made.state_dict(), "scale": init_scale})
        return made

    monkeypatch.setattr(loop, "new_grad_scaler", scaler)


def test_fp16_counts_the_steps_its_loss_scaler_skips(monkeypatch):
    high_scale(monkeypatch)
    seen = []
    result = train(
        TINY, fp16_cfg(), tiny_splits(), report=lambda m, s: seen.append(s.scaler), device="cpu"
    )
    scale = seen[-1].get_scale()
    skipped = [m["skipped_steps"] for m in result.history]
    # Each skipped step halves the scale, and it never grows in so few steps.
    assert sum(skipped) == round(math.log2(2.0**40 / scale)) > 0
    assert result.metrics["skipped_steps"] == sum(skipped)
    assert result.metrics["precision"] == "fp16"
    assert {m["precision"] for m in result.history} == {"fp16"}


def test_fp16_resume_continues_the_loss_scale(tmp_path, cifar_batches, monkeypatch):
    """`training.train --precision fp16`, interrupted and resumed, ends with the weights and
    loss scale of the run that was not interrupted: the scaler's state is in every
    checkpoint and the resume continues it."""
    high_scale(monkeypatch, 2.0**22)
    common = ["--model", "tiny_resnet", "--recipe", "smoke", "--device", "cpu", "--epochs",
              "2", "--batch-size", "8", "--data", str(cifar_batches), "--precision", "fp16"]  # fmt: skip
    split = ["--subset", "40", "--seed", "1"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train_cli.main([*common, *split, "--out", str(straight)]) == 0
    with interrupted_after_epoch(monkeypatch, 1):
        train_cli.main([*common, *split, "--out", str(broken)])
    first = load_checkpoint(broken / "checkpoint.pt")
    assert first["epoch"] == 1 and first["precision"] == "fp16"
    assert first["scaler"]["scale"] < 2.0**22  # the run's scale, not the initial one
    assert train_cli.main([*common, "--out", str(broken), "--resume"]) == 0

    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(broken / "checkpoint.pt")
    assert a["scaler"] == b["scaler"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    metrics = json.loads((broken / "metrics.json").read_text())
    assert metrics["precision"] == "fp16" and metrics["train_config"]["precision"] == "fp16"
    assert metrics["skipped_steps"] == sum(m["skipped_steps"] for m in metrics["history"]) > 0


def test_an_fp16_decay_branch_runs_on_a_copy_of_the_loss_scaler(monkeypatch):
    """A run with a decay branch trains exactly the weights and loss scale of one without:
    the branch scales its own loss, from the main run's scale."""
    high_scale(monkeypatch, 2.0**20)
    runs = {}
    for rungs in ((), (1,)):
        scalers = []
        result = train(
            TINY,
            fp16_cfg(epochs=3, decay_eval_epochs=rungs),
            tiny_splits(),
            report=lambda m, s, scalers=scalers: scalers.append(s.scaler.state_dict()),
            device="cpu",
        )
        runs[rungs] = scalers[-1], result.model.state_dict(), result.history
    assert "decay_branch_skipped_steps" in runs[(1,)][2][0]
    assert runs[()][0] == runs[(1,)][0]
    for key, value in runs[()][1].items():
        torch.testing.assert_close(value, runs[(1,)][1][key], rtol=0, atol=0, msg=key)


def test_a_nan_loss_under_fp16_is_still_a_failed_configuration():
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train(TINY, fp16_cfg(lr=1e30, momentum=0.0), tiny_splits(), device="cpu")


def test_auto_on_a_t4_trains_fp16_with_a_loss_scaler(monkeypatch):
    """The loop asks the policy: a stand-in T4 (on the CPU, which runs fp16 too) gets fp16
    with a loss scaler, recorded in the metrics and the checkpoint."""
    monkeypatch.setattr(loop, "device_info", lambda device: gpu("Tesla T4", (7, 5)))
    checkpoints = []
    result = train(
        TINY,
        get_recipe("smoke", epochs=1, batch_size=10),
        tiny_splits(),
        report=lambda m, s: checkpoints.append(s.checkpoint()),
        device="cpu",
    )
    assert result.metrics["precision"] == "fp16" and result.metrics["tf32"] is False
    assert result.metrics["device_name"] == "GPU 0 (Tesla T4, compute capability 7.5)"
    assert checkpoints[0]["precision"] == "fp16" and checkpoints[0]["scaler"]["scale"] > 0


def test_a_checkpoint_from_before_precision_resumes():
    state = TrainState(TINY, get_recipe("smoke"), CPU, steps=1)
    old = state.checkpoint()
    for key in ("precision", "tf32", "scaler"):
        del old[key]
    old["train_config"] = {**old["train_config"], "bf16": True}
    del old["train_config"]["precision"]
    cfg = TrainConfig.from_dict(old["train_config"])
    assert cfg.precision == "auto"
    TrainState(TINY, cfg.replace(precision="fp16"), CPU, steps=1).load(old)  # no scaler saved


@pytest.mark.parametrize(
    ("arch_list", "capability", "runs"),
    [
        (TORCH_215_ARCHS, (7, 5), True),  # T4
        (TORCH_215_ARCHS, (8, 9), True),  # L4: sm_86's binary runs on 8.9
        (TORCH_215_ARCHS, (9, 0), True),
        (TORCH_215_ARCHS, (7, 0), False),  # V100: CUDA 13 builds stop at sm_75
        (TORCH_215_ARCHS, (6, 0), False),  # Kaggle's P100
        (["sm_50", "sm_60", "sm_70"], (6, 1), True),
        (["sm_80", "compute_80"], (9, 0), True),  # PTX, compiled by the driver
        (["sm_80"], (9, 0), False),
        (["sm_90a"], (9, 0), True),
        (["sm_90a"], (10, 0), False),  # arch-specific code runs on that GPU only
    ],
)
def test_a_torch_build_runs_on_the_gpus_its_kernels_cover(arch_list, capability, runs):
    assert arch_runs_on(arch_list, capability) is runs


def test_a_gpu_without_kernels_stops_with_what_to_do():
    p100 = gpu("Tesla P100-PCIE-16GB", (6, 0))
    with pytest.raises(UnsupportedGpuError) as caught:
        check_gpu_supported("cuda", info=p100, arch_list=TORCH_215_ARCHS, probe=False)
    message = str(caught.value)
    for part in ("Tesla P100-PCIE-16GB", "compute capability 6.0", torch.__version__,
                 "sm_75, sm_80", "sm_60", "pip install torch", "--device cpu"):  # fmt: skip
        assert part in message, part
    check_gpu_supported("cuda", info=gpu("T4", (7, 5)), arch_list=TORCH_215_ARCHS, probe=False)
    check_gpu_supported("cpu")  # nothing to check off CUDA


def test_a_gpu_whose_first_op_fails_for_want_of_kernels_stops_with_what_to_do(monkeypatch):
    """The build lists the GPU's architecture, yet its first op fails (a driver or build
    mismatch): the same message, with torch's error, not a traceback."""

    def no_kernel(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(torch, "ones", no_kernel)
    with pytest.raises(UnsupportedGpuError, match=r"Tesla P100.*\(CUDA error: no kernel image"):
        check_gpu_supported("cuda", info=gpu("Tesla P100", (6, 0)), arch_list=["sm_60"])


def test_training_train_stops_on_a_gpu_its_torch_cannot_run(tmp_path, capsys, monkeypatch):
    from training import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for module in (precision, train_cli):
        monkeypatch.setattr(module, "device_info", lambda d: gpu("Tesla P100-PCIE-16GB", (6, 0)))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: TORCH_215_ARCHS)
    out = tmp_path / "run"
    code = train_cli.main(["--model", "tiny_resnet", "--device", "cuda", "--out", str(out),
                           "--data", str(tmp_path / "never-read")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "error: GPU 0 (Tesla P100-PCIE-16GB, compute capability 6.0) cannot run" in err
    assert not out.exists()
    # With a torch that has its kernels, the speedrun recipe's torch.compile is refused
    # before any data is read, and the message says how to train without it.
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_60", *TORCH_215_ARCHS])
    monkeypatch.setattr(torch, "ones", lambda *a, **k: torch.zeros(8))  # the probe op
    code = train_cli.main(["--model", "tiny_resnet", "--recipe", "speedrun", "--device", "cuda",
                           "--out", str(out), "--data", str(tmp_path / "never-read")])  # fmt: skip
    assert code == 2 and "torch.compile needs" in capsys.readouterr().err


def test_torch_compile_is_refused_below_compute_capability_7(monkeypatch):
    with pytest.raises(
        ValueError, match=r"7\.0 or newer.*Tesla P100, compute capability 6\.0.*--no-compile"
    ):
        check_compile(gpu("Tesla P100", (6, 0)))
    check_compile(gpu("Tesla V100", (7, 0)))
    check_compile(DeviceInfo(type="cpu", name="cpu"))
    # The loop refuses it before it trains anything.
    monkeypatch.setattr(loop, "device_info", lambda device: gpu("Tesla P100", (6, 0)))
    reports = []
    with pytest.raises(ValueError, match="torch.compile needs"):
        train(TINY, get_recipe("smoke", epochs=1, compile=True), tiny_splits(),
              report=lambda m, s: reports.append(m), device="cpu")  # fmt: skip
    assert reports == []


class _FakeTune:
    """Stands in for ray.tune inside a trial: keeps each report and a copy of its checkpoint,
    and hands the trial `resume_from` (a folder) as the checkpoint to continue."""

    def __init__(self, keep: Path, resume_from: Path | None = None) -> None:
        self.keep, self.resume_from, self.reports = keep, resume_from, []
        self.Checkpoint = SimpleNamespace(
            from_directory=lambda folder: SimpleNamespace(path=folder)
        )

    def get_checkpoint(self):
        if self.resume_from is None:
            return None
        folder = self.resume_from
        return SimpleNamespace(as_directory=lambda: contextlib.nullcontext(folder))

    def report(self, metrics, checkpoint=None):
        if checkpoint is not None:
            kept = self.keep / f"epoch_{metrics['epoch']}"
            shutil.copytree(checkpoint.path, kept)
            checkpoint = load_checkpoint(kept / "checkpoint.pt")
        self.reports.append((metrics, checkpoint))


def test_a_trial_trains_at_its_precision_and_resumes_its_loss_scale(tmp_path, monkeypatch):
    from search_spaces.spaces import TINY_START
    from tune import trainable

    high_scale(monkeypatch, 2.0**22)
    monkeypatch.setattr(trainable.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "n1"))  # fmt: skip
    monkeypatch.setattr(trainable, "local_trial_dir", lambda: tmp_path)
    config = {**TINY_START, "space": "tiny", "seed": 3, "params": 0, "width_scale": 1.0}
    settings = trainable.TrialSettings(max_epochs=2, max_batch_size=None, use_gpu=False,
                                       threads=1, checkpoint_every_s=0, precision="fp16")  # fmt: skip
    straight = _FakeTune(tmp_path / "straight")
    monkeypatch.setattr(trainable, "ray_tune", straight)
    trainable.run_trial(config, tiny_splits(), settings)
    assert [(m["epoch"], m["precision"]) for m, _ in straight.reports] == [(1, "fp16"), (2, "fp16")]
    assert straight.reports[0][0]["skipped_steps"] > 0  # reported with the epoch
    assert all(c["precision"] == "fp16" and c["scaler"] for _, c in straight.reports)

    resumed = _FakeTune(tmp_path / "resumed", resume_from=tmp_path / "straight" / "epoch_1")
    monkeypatch.setattr(trainable, "ray_tune", resumed)
    trainable.run_trial(config, tiny_splits(), settings)
    assert [m["epoch"] for m, _ in resumed.reports] == [2]
    assert resumed.reports[0][1]["scaler"] == straight.reports[1][1]["scaler"]
