"""The search command's arguments: the parser, the defaults, and every check that needs
neither data nor Ray, so a typo fails in a second; and how the command writes a command
line that a user can paste."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from training.logs import add_verbosity_flags
from tune.rungs import DEFAULT_REDUCTION_FACTOR

# Nothing here imports torch or Ray (models and search_spaces import torch): `--help` and a
# mistyped option answer at once. So the default budget is written out; a test checks that it
# is models.DEFAULT_BUDGET. The same for the spaces' names (search_spaces.SPACES).
FULL_BUDGET = 5_000_000
SPACE_NAMES = ("efficient_resnet", "seeds", "tiny")
PRECISION_NAMES = ("auto", "bf16", "fp16", "fp32")  # training.precision.PRECISIONS


class UsageError(ValueError):
    """A bad command-line input, found before Ray starts."""


@dataclass(frozen=True)
class Defaults:
    """What an option left unset becomes."""

    budget: int  # trainable parameters per network
    num_samples: int  # trials
    max_epochs: int  # epochs of a trial that ASHA never stops
    grace_period: int | None  # ASHA: epochs before the first rung; None: tune.rungs' rule
    retrain_seeds: int  # seeds of the final retrain, of the winner and of the seed baseline
    finalists: int  # top configurations re-run at the full epochs before the winner is picked
    finalist_seeds: int  # new seeds per finalist
    subset: int | None  # training images used (None: all)
    max_batch_size: int | None  # cap on every trial's and the retrain's batch size (no flag)


# --retrain-seeds: Welch's test with n seeds per side detects a true 0.5-point difference at
# a seed-to-seed standard deviation of 0.2 point (alpha 0.05, two-sided) with power 0.796 at
# n = 4 (short of 0.8) and 0.92 at n = 5, the fewest that reach 0.8
# (tune.compare.seeds_for_power); 5 keeps power at 0.77 if the real deviation is 0.25 point.
# The reduced CPU run takes 2, the fewest that give an interval at all: its comparison is a
# demonstration, not a test.
FULL = Defaults(
    budget=FULL_BUDGET,
    num_samples=64,
    max_epochs=30,
    grace_period=None,
    retrain_seeds=5,
    finalists=3,
    finalist_seeds=2,
    subset=None,
    max_batch_size=None,
)
# What a search without a GPU does unless told otherwise: a few minutes on a 2-core CPU that
# still learns (docs/results.md): networks of at most 60k parameters, 5,000 training images
# and 6 epochs, rather than a few epochs of a full-size network that learn nothing.
REDUCED = Defaults(
    budget=60_000,
    num_samples=6,
    max_epochs=6,
    grace_period=None,
    retrain_seeds=2,
    finalists=1,
    finalist_seeds=2,
    subset=5_000,
    # CPU training keeps every activation of a batch in host memory: batch 1024 through a
    # wide 32x32 stage took 19 GB and Ray's memory monitor killed the trial.
    max_batch_size=128,
)
# With --time-budget and no --num-samples, the budget alone ends the search.
UNLIMITED_SAMPLES = 100_000
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '45m', '2h' or a plain number of seconds -> seconds."""
    value, unit = text.strip(), "s"
    if value and value[-1].lower() in _DURATION_UNITS:
        value, unit = value[:-1], value[-1].lower()
    try:
        seconds = float(value) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a positive number with s, m or h, e.g. 45m"
        )
    return seconds


def _both(field: str) -> str:
    """'FULL; REDUCED without a GPU' for an option's help."""
    full, reduced = getattr(FULL, field), getattr(REDUCED, field)
    return f"{full if full is not None else 'all'}; {reduced} without a GPU"


DESCRIPTION = """\
Search a space of CIFAR-10 ResNets and their training recipes under a parameter budget,
then retrain the best and test it.

    python -m tune.search --space efficient_resnet --data DIR

Ray Tune runs the trials (an embedded local Ray, or a cluster with --address), Optuna
suggests configurations, ASHA stops weak trials early. The experiment folder
(STORAGE/NAME) then holds the trials with their TensorBoard logs, the finalists' re-runs
(finalists/), the seed baselines with --baseline seeds (baseline/, baseline_final/),
trials.parquet, best_config.json, final/ (retrained checkpoints, metrics.json,
predictions.csv) and report.md. Re-running with the same --name (or --resume) continues an interrupted search.
"""


def pasteable(path: Path) -> str:
    """`path` as the shell that started this process can run it: relative to the current
    folder where it lies inside it (`.venv/bin/python`), else absolute."""
    try:
        text = str(path.relative_to(Path.cwd()))
    except ValueError:  # outside the current folder (or already relative)
        return str(path)
    return text if "/" in text else f"./{text}"  # a bare name would be looked up in PATH


def interpreter() -> str:
    """The Python running this command, as a line to paste names it: the README runs
    `.venv/bin/python -m tune.search` from a shell whose PATH lacks the venv, where a bare
    `python` is another Python (without torch) or none at all."""
    return pasteable(Path(sys.executable))


def beside_interpreter(tool: str) -> str:
    """A command installed with this Python (tensorboard, optuna-dashboard), named so that it
    runs from the same shell; its bare name where it is not installed beside it."""
    path = Path(sys.executable).parent / tool
    return pasteable(path) if path.exists() else tool


def command_line(module: str, *args: object) -> str:
    """`python -m MODULE ARGS` with this Python, quoted for a POSIX shell."""
    return shlex.join([interpreter(), "-m", module, *map(str, args)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{interpreter()} -m tune.search",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # A mistyped option (--num-sample) is an error, not taken for the one it begins.
        allow_abbrev=False,
    )
    a = p.add_argument
    a("--space", default="efficient_resnet", help="search space (see --list-spaces)")
    a("--list-spaces", action="store_true", help="list the search spaces and exit")
    a("--data", help="CIFAR-10 folder or archive; omit to download with torchvision")
    a("--budget", type=int, help=f"max trainable parameters per model ({_both('budget')})")
    a(
        "--num-samples",
        type=int,
        help=f"trials to run ({_both('num_samples')}; unlimited with --time-budget)",
    )
    a(
        "--time-budget",
        type=parse_duration,
        help="stop the search after this long (e.g. 90s, 45m, 2h), then retrain the best",
    )
    a("--max-epochs", type=int, help=f"epochs of a trial ({_both('max_epochs')})")
    a(
        "--grace-period",
        type=int,
        help="ASHA: epochs before the first rung (default: max(2, max-epochs / 9 rounded up): "
        "4 of 30 epochs, 2 of 6)",
    )
    a(
        "--reduction-factor",
        type=int,
        default=DEFAULT_REDUCTION_FACTOR,
        help="ASHA: keep 1/this many at each rung; rungs at grace-period x this^k "
        "(default: %(default)s)",
    )
    a("--gpus-per-trial", type=float, help="GPUs per trial, fractions share a GPU (1; 0 on CPU)")
    a("--cpus-per-trial", type=float, default=1, help="CPUs per trial (default: %(default)s)")
    a(
        "--precision",
        choices=PRECISION_NAMES,
        default="auto",
        help="every trial's, finalist's and retrain's precision: auto picks bf16 from CUDA "
        "compute capability 8.0, fp16 with loss scaling on 7.x, fp32 below, on a CPU bf16 "
        "where measured faster (default: %(default)s; a resumed search keeps its own)",
    )
    a(
        "--address",
        # A Ray job's driver gets its cluster's address in RAY_ADDRESS.
        default=os.environ.get("RAY_ADDRESS") or None,
        help="an existing Ray cluster (e.g. 10.0.0.5:6379 or auto; default: $RAY_ADDRESS, "
        "else an embedded local Ray of this process's own)",
    )
    a(
        "--max-concurrent-trials",
        type=int,
        help="trials running or waiting for a node at once: what an autoscaler scales to "
        "(default: what the cluster's declared maximum, else its live nodes, can run; a "
        "resumed search keeps the value it started with)",
    )
    a(
        "--checkpoint-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a trial checkpoints at most this often and after its last epoch, so a killed "
        "trial loses at most this much (default: %(default)g; 0: every epoch)",
    )
    a(
        "--storage-path",
        default="experiments",
        help="where experiments go: a local folder or an s3:// / gs:// URI (default: %(default)s)",
    )
    a("--name", help="experiment name (default: SPACE-DATE-TIME); an existing one resumes")
    a("--resume", action="store_true", help="continue the experiment --name (or the latest)")
    a(
        "--seed",
        type=int,
        default=0,
        help="seeds the searcher and, derived, every trial (default: %(default)s)",
    )
    a(
        "--warm-start",
        metavar="EXPERIMENT",
        help="start the study from the finished trials of an earlier experiment: its name in "
        "--storage-path, or its folder's path; it must have searched like this one (same "
        "space, --max-epochs, --budget, --subset, --data, --seed), so TPE does not start "
        "from zero",
    )
    a("--retrain-epochs", type=int, help="epochs of the final retrain (default: --max-epochs)")
    a(
        "--retrain-seeds",
        type=int,
        help="seeds of the final retrain, the winner's and the seed baseline's "
        f"({_both('retrain_seeds')}; 5 detects a 0.5-point difference at a 0.2-point seed "
        "spread)",
    )
    a(
        "--finalists",
        type=int,
        help="re-run the top K configurations that trained every epoch with --finalist-seeds "
        f"new seeds each; the winner has the best mean ({_both('finalists')}; 0: the best "
        "score wins)",
    )
    a(
        "--finalist-seeds",
        type=int,
        help=f"new seeds per finalist ({_both('finalist_seeds')})",
    )
    a(
        "--baseline",
        choices=["none", "seeds"],
        default="none",
        help="seeds: also train the seed networks at the same epochs in this experiment "
        "(unless a matching --space seeds experiment is in the storage folder) and compare "
        "the winner with the best of them (default: none, compare with a matching "
        "--space seeds experiment if there is one)",
    )
    a("--predict", help="unlabeled pickle (b'data', b'ids') to write final/predictions.csv for")
    a("--subset", type=int, help=f"use N training images ({_both('subset')})")
    a("--full", action="store_true", help="no reduced run even without a GPU")
    a("--skip-retrain", action="store_true", help="stop after the search and its report")
    add_verbosity_flags(p)
    return p


def format_space_list() -> str:
    from search_spaces import SPACES

    width = max(map(len, SPACES))
    return "\n".join(f"{name:<{width}}  {s.description}" for name, s in SPACES.items())


def validate_args(args: argparse.Namespace) -> None:
    """Every check of the options that needs no torch (the space's name, the ranges, the
    files named), so that a mistake is refused before the seconds torch takes to import."""
    if args.space not in SPACE_NAMES:
        raise UsageError(
            f"unknown search space {args.space!r}; valid spaces: {', '.join(SPACE_NAMES)}"
        )
    for flag in (
        "budget",
        "num_samples",
        "max_epochs",
        "grace_period",
        "retrain_epochs",
        "retrain_seeds",
        "finalist_seeds",
        "subset",
        "max_concurrent_trials",
    ):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} is {value}; it must be a positive number")
    if args.checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every is {args.checkpoint_every}; it must be 0 or more")
    if args.finalists is not None and args.finalists < 0:
        raise UsageError(f"--finalists is {args.finalists}; it must be 0 or more")
    if args.baseline == "seeds" and args.space == "seeds":
        raise UsageError(
            "--baseline seeds compares a search with the seed networks, and --space seeds "
            "already trains them; drop --baseline or search another space"
        )
    if args.reduction_factor < 2:
        raise UsageError(f"--reduction-factor is {args.reduction_factor}; it must be at least 2")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial is {args.gpus_per_trial}; it must be 0 or more")
    if args.data is not None and not Path(args.data).exists():
        raise UsageError(
            f"--data {args.data} does not exist; pass a CIFAR-10 folder or archive "
            "(or omit --data to download CIFAR-10 with torchvision)"
        )
    if args.predict is not None and not Path(args.predict).is_file():
        raise UsageError(f"--predict {args.predict} is not a file; pass an unlabeled pickle")


def check_budget(args: argparse.Namespace) -> None:
    """A budget below the space's smallest network is refused (models.BudgetTooSmallError);
    counting networks needs torch, so this follows `validate_args`."""
    from search_spaces import get_space

    # Without --budget the smaller default is checked: a GPU may not be there.
    get_space(args.space).check_budget(args.budget or min(FULL.budget, REDUCED.budget))
