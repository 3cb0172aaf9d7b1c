"""An experiment's settings: what the command line and the defaults make of a search, saved
in the experiment so that a resume (from any machine) continues with exactly them."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from training.artifacts import write_json
from tune.cli import FULL, REDUCED, UNLIMITED_SAMPLES, Defaults, UsageError
from tune.rungs import default_grace_period
from tune.state_files import recover
from tune.storage import ExperimentStorage, is_uri
from tune.study import STUDY_FILE, experiment_at

logger = logging.getLogger(__name__)
SETTINGS_FILE = "search_settings.json"
# How long the search has run, across resumes (--time-budget): one line of JSON. Not named
# .json: a restored Ray experiment copies the experiment's .json and .pkl files into its
# staging folder and uploads them back while it runs, over the clock's newer versions
# (ray/tune/execution/experiment_state.py, sync_down_experiment_state, Ray 2.60).
CLOCK_FILE = "search_clock.txt"


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines an experiment; saved in it so a resume reuses it exactly."""

    space: str
    name: str
    storage_path: str
    data: str | None  # absolute path of the data, or None for torchvision's download
    budget: int  # trainable parameters per network
    seed: int  # seeds the searcher, the validation split and (derived) every trial
    num_samples: int  # trials; UNLIMITED_SAMPLES when a time budget ends the search
    max_epochs: int
    grace_period: int
    reduction_factor: int
    gpus_per_trial: float  # fractions share a GPU
    cpus_per_trial: float
    retrain_epochs: int
    retrain_seeds: int
    subset: int | None
    max_batch_size: int | None  # cap on every trial's and the retrain's batch size
    predict: str | None  # unlabeled pickle to predict after the retrain
    reduced: str  # why and how the run was reduced, or ""
    time_budget_s: float | None = None  # no trial starts after this many seconds; None = none
    # A trial checkpoints at most this often (seconds) and after its last epoch; 0: every epoch
    checkpoint_every_s: float = 60.0
    # Defaults for settings saved before these existed: no finalists, no baseline run.
    finalists: int = 0  # top configurations re-run at full epochs before picking the winner
    finalist_seeds: int = 1  # new seeds per finalist
    baseline: str = "none"  # "seeds": train the seed networks in this experiment to compare
    warm_start: str | None = None  # an earlier experiment whose finished trials seed the study
    # Every trial's, finalist's and retrain's TrainConfig.precision ("auto": by each one's
    # device, training.precision); what each really used is in its metrics.
    precision: str = "auto"

    @property
    def storage(self) -> ExperimentStorage:
        return ExperimentStorage(self.storage_path, self.name)

    @property
    def unlimited(self) -> bool:
        return self.num_samples >= UNLIMITED_SAMPLES

    @classmethod
    def from_saved(cls, saved: dict, where: str) -> SearchSettings:
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown, missing = sorted(set(saved) - known), sorted(required - set(saved))
        if unknown or missing:
            raise UsageError(
                f"{where} was written by another version of this tool (unknown settings "
                f"{unknown}, missing {missing}); continue it with that version, or start a new "
                "experiment with another --name"
            )
        return cls(**saved)


def _latest_experiment(storage: Path, space: str) -> str:
    candidates = sorted(
        (p for p in storage.glob(f"{space}-*") if (p / SETTINGS_FILE).exists()),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise UsageError(
            f"--resume: no experiment of space {space!r} in {storage}; pass --name of the "
            "experiment to continue"
        )
    return candidates[-1].name


def open_storage(args: argparse.Namespace) -> tuple[ExperimentStorage, SearchSettings | None]:
    """The experiment's storage (probed for writing) and its saved settings, if it has some:
    an experiment that exists is continued with the settings it started with."""
    root = (
        args.storage_path
        if is_uri(args.storage_path)
        else str(Path(args.storage_path).expanduser().resolve())
    )
    name = args.name
    if args.resume and name is None:
        if is_uri(root):
            raise UsageError("--resume with a cloud --storage-path needs the experiment's --name")
        name = _latest_experiment(Path(root), args.space)
    if name is None:
        name = f"{args.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = ExperimentStorage(root, name)
    storage.check_writable()
    if not storage.remote_dir:
        # Before anything reads the experiment's files: each damaged one is restored from
        # its last good copy, or the command stops here, before Ray starts.
        recover(storage.local_dir)
    if storage.pull(SETTINGS_FILE):
        storage.pull(STUDY_FILE)  # the Optuna study continues where it stopped
        storage.pull(CLOCK_FILE)  # and so does the clock of --time-budget
        path = storage.local_dir / SETTINGS_FILE
        settings = SearchSettings.from_saved(json.loads(path.read_text()), str(path))
        logger.info("continuing experiment %s with its saved settings", storage.uri)
        return storage, settings
    if args.resume:
        raise UsageError(f"--resume: no experiment {name!r} in {root} to continue")
    return storage, None


def reduced_message(args: argparse.Namespace) -> str:
    """What a run without a GPU sets that the user left unset, and how to undo it."""
    chosen = [
        f"--{key.replace('_', '-')} {value:,}"
        for key, value in asdict(REDUCED).items()
        if key != "max_batch_size"
        and value is not None
        and getattr(args, key, None) is None
        and not (key == "num_samples" and args.time_budget is not None)
    ]
    return (
        "no GPU found, so the options left unset take small values: "
        + ", ".join(chosen)
        + f"; batches hold at most {REDUCED.max_batch_size} images (the learning rate scaled "
        f"with them). The full search ({FULL.num_samples} trials of up to "
        f"{FULL.max_epochs} epochs of networks up to {FULL.budget:,} parameters on all the "
        "training images) is made for GPUs: pass --full to run it anyway, or set the options "
        "yourself"
    )


def resolve_settings(
    args: argparse.Namespace, storage: ExperimentStorage, have_gpu: bool
) -> SearchSettings:
    """Fill the defaults, reduced ones when the cluster has no GPU."""
    defaults: Defaults = FULL if have_gpu or args.full else REDUCED
    pick = {
        key: getattr(args, key) if getattr(args, key, None) is not None else value
        for key, value in asdict(defaults).items()
    }
    if args.time_budget is not None and args.num_samples is None:
        pick["num_samples"] = UNLIMITED_SAMPLES
    max_epochs = pick["max_epochs"]
    grace_period = pick["grace_period"] or default_grace_period(max_epochs)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if have_gpu else 0.0)
    settings = SearchSettings(
        space=args.space,
        name=storage.name,
        storage_path=storage.storage_path,
        data=str(Path(args.data).resolve()) if args.data else None,
        budget=pick["budget"],
        seed=args.seed,
        num_samples=pick["num_samples"],
        max_epochs=max_epochs,
        grace_period=min(grace_period, max_epochs),
        reduction_factor=args.reduction_factor,
        gpus_per_trial=gpus,
        cpus_per_trial=args.cpus_per_trial,
        retrain_epochs=args.retrain_epochs or max_epochs,
        retrain_seeds=pick["retrain_seeds"],
        subset=pick["subset"],
        max_batch_size=defaults.max_batch_size,
        predict=str(Path(args.predict).resolve()) if args.predict else None,
        reduced="" if defaults is FULL else reduced_message(args),
        time_budget_s=args.time_budget,
        checkpoint_every_s=getattr(args, "checkpoint_every", 60.0),
        finalists=pick["finalists"],
        finalist_seeds=pick["finalist_seeds"],
        baseline=args.baseline,
        warm_start=args.warm_start,
        precision=getattr(args, "precision", "auto"),
    )
    if args.warm_start:
        wanted = {key: getattr(settings, key) for key in WARM_START_MATCH}
        warm_start = check_warm_start(storage, args.warm_start, wanted)
        settings = replace(settings, warm_start=warm_start)
    return settings


# What must match between a search and the experiment it warm-starts from: its values mean
# the same only then (`budget`: a trial's size is a share of it; `subset`, `data`, `seed`:
# the images trained and validated on, the seed drawing the validation split).
WARM_START_MATCH = ("space", "max_epochs", "budget", "subset", "data", "seed")
_OPTION = {"space": "--space", "max_epochs": "--max-epochs", "budget": "--budget",
           "subset": "--subset", "data": "--data", "seed": "--seed"}  # fmt: skip


def check_warm_start(storage: ExperimentStorage, warm_start: str, wanted: dict) -> str:
    """--warm-start must name (or be the path of) another finished experiment that searched
    like this one (`wanted`: the WARM_START_MATCH settings of this search). Returns how the
    settings keep it: its name when it is in this --storage-path, else its absolute path."""
    other = experiment_at(storage.storage_path, warm_start)
    if (other.storage_path, other.name) == (storage.storage_path, storage.name):
        raise UsageError(f"--warm-start {warm_start} is this experiment; name an earlier one")
    if not other.pull(SETTINGS_FILE) or not other.pull(STUDY_FILE):
        raise UsageError(
            f"--warm-start: no finished experiment {warm_start!r} (its {SETTINGS_FILE} and "
            f"{STUDY_FILE} in {other.uri}); pass the name of one in --storage-path "
            f"{storage.storage_path}, or the path of its folder"
        )
    saved = json.loads((other.local_dir / SETTINGS_FILE).read_text())
    differ = [key for key in WARM_START_MATCH if saved.get(key) != wanted.get(key)]
    if differ:
        theirs = " ".join(f"{_OPTION[k]} {_shown(saved.get(k))}" for k in differ)
        ours = " ".join(f"{_OPTION[k]} {_shown(wanted.get(k))}" for k in differ)
        raise UsageError(
            f"--warm-start {warm_start} searched with {theirs}, this search with {ours}: its "
            "accuracies are not comparable with this search's; pass the same "
            + ", ".join(_OPTION[k] for k in differ)
            + f" ({theirs}), or warm-start from an experiment that searched like this one"
        )
    same_storage = other.storage_path.rstrip("/") == storage.storage_path.rstrip("/")
    return other.name if same_storage else other.uri


def _shown(value: object) -> str:
    if value is None:
        return "(none)"
    return f"{value:,}" if isinstance(value, int) else str(value)


def save_settings(settings: SearchSettings) -> None:
    storage = settings.storage
    write_json(storage.local_dir / SETTINGS_FILE, asdict(settings))
    storage.push(SETTINGS_FILE)
