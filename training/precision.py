"""Which precision a run trains at on the device it has, and the checks that stop a run on a
GPU it cannot use.

    plan = plan_precision(cfg.precision, device_info(device), channels_last=cfg.channels_last)

The policy for `auto` (`choose_precision`), by CUDA compute capability:
- 8.0 and newer (A100, L4, RTX 30xx/40xx, H100/H200): bf16 autocast, and TF32 for the
  float32 matmuls and convolutions that remain. bf16 has float32's range: no loss scaling.
- 7.x (V100, T4, RTX 8000): fp16 autocast with a loss scaler (`torch.amp.GradScaler`):
  their tensor cores do fp16, not bf16. `torch.cuda.is_bf16_supported()` is not asked: it
  says True on these GPUs since torch 2.4 because bf16 can be emulated, slower than fp32.
- older (P100, K80): fp32.
- a CPU with AMX-BF16 and AVX512-BF16 (Intel Xeon since Sapphire Rapids): bf16 autocast with
  channels_last, measured 1.6 times as fast per epoch as fp32 for the reduced run's trials,
  which learned as well (docs/benchmarks.md, 2026-12-04); other CPUs: fp32.
An explicit bf16, fp16 or fp32 is used as asked, with a warning where it is slow here.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

logger = logging.getLogger(__name__)

Precision = Literal["auto", "bf16", "fp16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
Resolved = Literal["bf16", "fp16", "fp32"]

BF16_CAPABILITY = (8, 0)  # native bf16 and TF32 tensor cores (Ampere and newer)
FP16_CAPABILITY = (7, 0)  # fp16 tensor cores (Volta, Turing)
COMPILE_CAPABILITY = (7, 0)  # the oldest GPU torch.compile's Triton kernels run on

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class UnsupportedGpuError(RuntimeError):
    """The installed torch has no kernels for this GPU: nothing can run on it."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the precision policy needs to know of a device; tests build stand-ins."""

    type: str  # "cuda" or "cpu"
    name: str  # e.g. "Tesla T4", "cpu"
    capability: tuple[int, int] | None = None  # CUDA compute capability; None off CUDA
    # The CPU has the instructions bf16 was measured faster with (AMX-BF16 and AVX512-BF16).
    cpu_fast_bf16: bool = False
    index: int | None = None  # CUDA device index

    def describe(self) -> str:
        if self.capability is None:
            return self.name
        major, minor = self.capability
        where = f"GPU {self.index}" if self.index is not None else "the GPU"
        return f"{where} ({self.name}, compute capability {major}.{minor})"


def device_info(device: torch.device | str) -> DeviceInfo:
    """The description of a real device (queries CUDA for a GPU; initialises nothing else)."""
    device = torch.device(device)
    if device.type != "cuda":
        return DeviceInfo(type=device.type, name=device.type, cpu_fast_bf16=_cpu_fast_bf16())
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DeviceInfo(
        type="cuda",
        name=torch.cuda.get_device_name(index),
        capability=tuple(torch.cuda.get_device_capability(index)),  # type: ignore[arg-type]
        index=index,
    )


def _cpu_fast_bf16() -> bool:
    # torch.cpu's feature probes are private (present in torch 2.1 and later): read them
    # guarded, and assume no fast bf16 when they are missing.
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    probes = [getattr(torch.cpu, name, None) for name in names]
    try:
        return all(probe is not None and probe() for probe in probes)
    except RuntimeError:
        return False


@dataclass(frozen=True)
class PrecisionPlan:
    """How one run computes on its device, decided once before it trains."""

    precision: Resolved
    tf32: bool  # float32 matmuls and convolutions may use TF32 tensor cores (CUDA >= 8.0)
    channels_last: bool  # activations and weights in channels_last memory format
    reason: str  # why this precision, for the log
    warning: str = ""  # what is slow or odd about an explicit choice here, or ""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast computes in; None: no autocast (fp32)."""
        return _AUTOCAST_DTYPES.get(self.precision)

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without a loss scaler (torch.amp.GradScaler)."""
        return self.precision == "fp16"

    def autocast(self, device_type: str) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def choose_precision(requested: str, info: DeviceInfo) -> tuple[Resolved, str, str]:
    """(precision, why, warning) for `requested` on the device `info` describes; the policy
    in the module's docstring. An explicit precision is kept, with a warning where slow."""
    if requested not in PRECISIONS:
        raise ValueError(
            f"precision {requested!r} is not one of {list(PRECISIONS)}; pass --precision auto "
            "to choose by device"
        )
    where = info.describe()
    if requested == "auto":
        if info.type == "cuda" and info.capability is not None:
            if info.capability >= BF16_CAPABILITY:
                return "bf16", f"auto: {where} computes bf16 natively", ""
            if info.capability >= FP16_CAPABILITY:
                return "fp16", f"auto: {where} has fp16 tensor cores, not bf16 ones", ""
            return "fp32", f"auto: {where} has no tensor cores", ""
        if info.type == "cpu" and info.cpu_fast_bf16:
            return "bf16", "auto: bf16 measured faster on a CPU with AMX-BF16", ""
        return "fp32", f"auto: bf16 was not measured faster on {where}", ""
    warning = ""
    if info.type == "cuda" and info.capability is not None:
        if requested == "bf16" and info.capability < BF16_CAPABILITY:
            warning = (
                f"bf16 on {where} is emulated, slower than fp32; --precision auto picks "
                f"{choose_precision('auto', info)[0]} here"
            )
    elif requested == "fp16":
        warning = (
            f"fp16 on the {where} has no fast kernels and trains far slower than fp32; use "
            "--precision auto"
        )
    elif requested == "bf16" and not info.cpu_fast_bf16:
        warning = (
            f"bf16 on this {where} (no AMX-BF16) was not measured faster than fp32; --precision "
            "auto picks fp32 here"
        )
    return requested, "as asked", warning  # type: ignore[return-value]


def plan_precision(
    requested: str, info: DeviceInfo, *, channels_last: bool = True
) -> PrecisionPlan:
    """The plan for `requested` on `info`'s device. `channels_last` (the config's wish) is
    used on a GPU, and on a CPU for bf16, where it was measured faster (docs/benchmarks.md)."""
    precision, reason, warning = choose_precision(requested, info)
    cuda = info.type == "cuda"
    return PrecisionPlan(
        precision=precision,
        tf32=cuda and info.capability is not None and info.capability >= BF16_CAPABILITY,
        channels_last=channels_last and (cuda or precision == "bf16"),
        reason=reason,
        warning=warning,
    )


def apply_tf32(plan: PrecisionPlan) -> None:
    """Allow (or forbid) TF32 for this process's CUDA float32 matmuls and convolutions.

    torch has two APIs for this, and reading a flag after the two were mixed raises (torch
    2.15: `cuda.matmul.fp32_precision` set, then `cuda.matmul.allow_tf32` read, as
    torch.compile does). `set_float32_matmul_precision` with `cudnn.allow_tf32` keeps every
    flag of both readable (checked on 2.15) and exists in every torch; 2.9 to 2.11 warn once
    that they will be deprecated, which is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.set_float32_matmul_precision("high" if plan.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = plan.tf32


def new_grad_scaler(plan: PrecisionPlan, device_type: str) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 needs, or None."""
    return torch.amp.GradScaler(device_type) if plan.loss_scaling else None


def check_compile(info: DeviceInfo) -> None:
    """Refuse torch.compile where its GPU kernels (Triton) cannot run."""
    if info.type == "cuda" and info.capability is not None and info.capability < COMPILE_CAPABILITY:
        raise ValueError(
            f"torch.compile needs a GPU of compute capability "
            f"{COMPILE_CAPABILITY[0]}.{COMPILE_CAPABILITY[1]} or newer (its Triton kernels), and "
            f"{info.describe()} is older; train without it (training.train --no-compile)"
        )


_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)([af]?)$")


def arch_runs_on(arch_list: list[str], capability: tuple[int, int]) -> bool:
    """Whether a torch built for `arch_list` (`torch.cuda.get_arch_list()`) has code for a
    GPU of `capability`."""
    return any(_covers(name, capability) for name in arch_list)


def _covers(name: str, capability: tuple[int, int]) -> bool:
    match = _ARCH.match(name)
    if match is None:
        return False
    kind, arch, suffix = match[1], (int(match[2]), int(match[3])), match[4]
    if suffix == "a":  # arch-specific code (sm_90a) runs on exactly that GPU
        return arch == capability
    if kind == "compute":  # PTX, which the driver compiles for this or any newer GPU
        return arch <= capability
    # A binary runs on its major version at an equal or higher minor one (sm_80 on 8.6).
    return arch[0] == capability[0] and arch[1] <= capability[1]


def unsupported_gpu_message(info: DeviceInfo, arch_list: list[str], error: str = "") -> str:
    major, minor = info.capability or (0, 0)
    built = ", ".join(arch_list) or "none"
    seen = f" ({error.strip().splitlines()[0]})" if error.strip() else ""
    return (
        f"{info.describe()} cannot run this torch {torch.__version__} (built for CUDA "
        f"{torch.version.cuda}, with kernels for {built}){seen}. Install a torch build whose "
        f"torch.cuda.get_arch_list() includes sm_{major}{minor} (CUDA 13 builds have none "
        f"below sm_75; a CUDA 12.6 one: pip install torch --index-url "
        "https://download.pytorch.org/whl/cu126), or run on another GPU, or on the CPU "
        "(--device cpu for training.train, --gpus-per-trial 0 for the search)"
    )


def check_gpu_supported(
    device: torch.device | str = "cuda",
    *,
    info: DeviceInfo | None = None,
    arch_list: list[str] | None = None,
    probe: bool = True,
) -> None:
    """Stop at once, naming the GPU, its compute capability, the torch build and what to do,
    if the installed torch has no kernels for it (on Kaggle's P100 every CUDA op otherwise
    fails with "no kernel image is available", deep in the first step). Compares the GPU's
    capability with the build's architectures, then runs one tiny op (`probe`). `info` and
    `arch_list` stand in for the real GPU in tests. Does nothing off CUDA or on ROCm."""
    device = torch.device(device)
    if device.type != "cuda" or torch.version.hip:
        return
    info = info or device_info(device)
    if info.capability is None:
        return
    arch_list = torch.cuda.get_arch_list() if arch_list is None else arch_list
    if arch_list and not arch_runs_on(arch_list, info.capability):
        raise UnsupportedGpuError(unsupported_gpu_message(info, arch_list))
    if probe:
        try:
            x = torch.ones(8, device=device)
            (x * 2).sum().item()
        except RuntimeError as e:
            if "no kernel image" not in str(e) and "not compatible" not in str(e):
                raise
            raise UnsupportedGpuError(unsupported_gpu_message(info, arch_list, str(e))) from None


def log_plan(plan: PrecisionPlan, device: torch.device) -> None:
    tf32 = ", TF32 matmuls" if plan.tf32 else ""
    layout = ", channels_last" if plan.channels_last else ""
    logger.info("precision %s on %s%s%s (%s)", plan.precision, device, tf32, layout, plan.reason)
    if plan.warning:
        logger.warning(plan.warning)


def check_visible_gpus() -> int:
    """`check_gpu_supported` for every GPU this process sees, before anything is started on
    them (a search checks them before Ray starts, not in a traceback inside a Ray worker);
    how many there are. Nothing to check without CUDA."""
    if not torch.cuda.is_available():
        return 0
    count = torch.cuda.device_count()
    for index in range(count):
        check_gpu_supported(torch.device("cuda", index))
    return count
