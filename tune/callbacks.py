"""The project's Ray Tune callbacks, on every run of an experiment (new or restored):

- StopWhenSignalled: a Ctrl-C that came while a run was being prepared (its Tuner restored
  or made) stops that run as soon as its trial loop starts, through Ray Tune's own graceful
  stop (tune.interrupt);
- StateSnapshots: a last good copy of each of the experiment's state files as the run goes
  (tune.state_files), from which a resume restores a file that a kill left damaged.

A restored Tuner brings the callbacks it was pickled with; `with_project_callbacks` puts
fresh ones in their place, so an experiment started by an older version gets them too."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tune import interrupt
from tune.state_files import SNAPSHOT_DIR, keep_good_copies

logger = logging.getLogger(__name__)


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


def project_callbacks(root: str | Path) -> list[Callback]:
    return [StopWhenSignalled(), StateSnapshots(root)]


def with_project_callbacks(tuner: Any, root: str | Path) -> Any:
    """A restored Tuner with fresh project callbacks in place of the pickled ones."""
    run_config = tuner._local_tuner.get_run_config()
    kept = [
        c
        for c in (run_config.callbacks or [])
        if not isinstance(c, (StopWhenSignalled, StateSnapshots))
    ]
    run_config.callbacks = kept + project_callbacks(root)
    return tuner
