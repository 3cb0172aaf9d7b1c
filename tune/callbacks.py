"""The project's Ray Tune callbacks, on every run of an experiment (new or restored):

- StopWhenSignalled: a Ctrl-C that came while a run was being prepared (its Tuner restored
  or made) stops that run as soon as its trial loop starts, through Ray Tune's own graceful
  stop (tune.interrupt);
- StateSnapshots: a last good copy of each of the experiment's state files as the run goes
  (tune.state_files), from which a resume restores a file that a kill left damaged;
- OneRowPerEpoch: a trial that starts again trains again the epochs since its checkpoint;
  its results list each of them once.

A restored Tuner brings the callbacks it was pickled with; `with_project_callbacks` puts
fresh ones in their place, so an experiment started by an older version gets them too."""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ray.tune import Callback

from tune import interrupt
from tune.state_files import SNAPSHOT_DIR, keep_good_copies

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StopWhenSignalled(Callback):
    """Passes a stop signal that came before Ray Tune's loop began on to that loop."""

    def setup(self, **info: Any) -> None:
        stop = interrupt.installed()
        if stop is not None and stop.loop_started():
            # Ray Tune's SIGUSR1 handler for this run is in place: it ends the loop before
            # a trial starts, saves the experiment, and leaves the trials resumable.
            signal.raise_signal(signal.SIGUSR1)


class StateSnapshots(Callback):
    """Keeps a last good copy of each state file of the experiment folder `root` (and its
    finalists/ and baseline/ runs): after each trial result and checkpoint (the searcher has
    told the study by then), each trial's end, each save of Ray's experiment state (its `get_state`
    call), and the run's end. A copy is taken only of a file that changed and reads back
    whole; Ray's own files are written (or synced) a moment before the copy is taken, so a
    copy may lag them by a save, never hold half of one."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._seen: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into tuner.pkl: what was copied in this process means nothing in the next.
        return {"root": self.root, "_seen": {}}

    def _keep(self) -> None:
        # Only files that changed are copied (the study, after each result: a copy that
        # lagged it would lose that epoch's value if it had to be restored).
        try:
            keep_good_copies(Path(self.root), self._seen)
        except OSError as e:  # a full disk must not end the search; the copies just lag
            logger.warning(
                "could not keep a copy of the experiment's state in %s: %s", SNAPSHOT_DIR, e
            )

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._keep()

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        self._keep()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._keep()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._keep()

    def get_state(self) -> dict | None:
        self._keep()
        return None  # nothing of ours to save in Ray's experiment state


class OneRowPerEpoch(Callback):
    """A trial that starts again (Ray retrying it after its worker died, or a resumed
    experiment) trains again the epochs since its last checkpoint, all of them without one.
    Ray's loggers keep its results in the driver's staging folder (synced to storage) and
    append to what is there: the results a retry left, or the copy of the stored ones a
    resume fetches, which may run past the checkpoint (--checkpoint-every, or a kill between
    a report and Ray's next save of the experiment state). So after the first result of each
    start, that result's epoch and any after it are dropped from the earlier rows: each epoch
    is listed once, as the run whose weights went on trained it (the study and the results
    table keep that one too: tune.study.record_epoch)."""

    def __init__(self) -> None:
        self._started: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"_started": set()}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.add(trial.trial_id)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if trial.trial_id not in self._started:
            return
        self._started.discard(trial.trial_id)
        epoch = result.get("training_iteration")
        if trial.local_path is None or epoch is None:
            return
        folder = Path(trial.local_path)
        try:
            dropped = drop_repeated_epochs(folder, int(epoch))
        except OSError as e:
            logger.warning("could not drop the repeated epochs from %s: %s", folder, e)
            return
        if dropped:
            logger.info(
                "trial %s started again at epoch %d: %d earlier result row(s) of that epoch "
                "or later dropped from its results",
                trial.trial_id,
                epoch,
                dropped,
            )


def _rewrite_in_place(path: Path, text: str) -> None:
    # In place, not through a rename: Ray's loggers hold the file open for appending and
    # would go on writing to the file renamed over.
    with open(path, "r+", newline="") as f:
        f.write(text)
        f.truncate()


def _json_epoch(line: str) -> float | None:
    try:
        return float(json.loads(line)["training_iteration"])
    except (ValueError, KeyError, TypeError):
        return None


def _without_repeats(rows: list[T], epoch_of: Callable[[T], float | None], epoch: int) -> list[T]:
    """`rows` without the earlier ones of `epoch` or later, where the last row reports
    `epoch`; `rows` itself otherwise."""
    if not rows or epoch_of(rows[-1]) != epoch:
        return rows
    return [*(row for row in rows[:-1] if (epoch_of(row) or 0) < epoch), rows[-1]]


def drop_repeated_epochs(folder: Path, epoch: int) -> int:
    """In the trial folder's result.json and progress.csv, whose last row reports `epoch`:
    drop the earlier rows of `epoch` or later. The rows dropped from result.json."""
    dropped = 0
    results = folder / "result.json"
    if results.is_file():
        lines = results.read_text().splitlines(keepends=True)
        kept = _without_repeats(lines, _json_epoch, epoch)
        dropped = len(lines) - len(kept)
        if dropped:
            _rewrite_in_place(results, "".join(kept))
    progress = folder / "progress.csv"
    if progress.is_file():
        with open(progress, newline="") as f:
            header, *rows = list(csv.reader(f)) or [[]]
        if "training_iteration" in header:
            column = header.index("training_iteration")

            def row_epoch(row: list[str]) -> float | None:
                try:
                    return float(row[column])
                except (IndexError, ValueError):
                    return None

            kept_rows = _without_repeats(rows, row_epoch, epoch)
            if len(kept_rows) < len(rows):
                buffer = io.StringIO()
                csv.writer(buffer).writerows([header, *kept_rows])  # Ray's dialect
                _rewrite_in_place(progress, buffer.getvalue())
    return dropped


def project_callbacks(root: str | Path) -> list[Callback]:
    return [StopWhenSignalled(), StateSnapshots(root), OneRowPerEpoch()]


def with_project_callbacks(tuner: Any, root: str | Path) -> Any:
    """A restored Tuner with fresh project callbacks in place of the pickled ones."""
    run_config = tuner._local_tuner.get_run_config()
    kept = [
        c
        for c in (run_config.callbacks or [])
        if not isinstance(c, (StopWhenSignalled, StateSnapshots, OneRowPerEpoch))
    ]
    run_config.callbacks = kept + project_callbacks(root)
    return tuner
