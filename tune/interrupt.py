"""Ctrl-C (SIGINT) and SIGTERM during a search: the first stops it cleanly, a second at once.

Left to itself, Ray Tune's SIGINT handler ends the trial loop, saves the experiment and lets
`Tuner.fit` return as if the search had finished: the search would then pick a winner among
cut-off trials, retrain it and write a report of a search that did not end. Here the first
signal asks Ray Tune to stop the same way (through the SIGUSR1 handler that Ray Tune installs
while `fit` runs: it saves the experiment state, and the trials stay resumable), and is
remembered, so the search exits after `fit` without results. Outside `fit` (before it, and
in the retrain) the first signal raises `SearchInterrupted` where the program is. A second
signal exits at once, whatever is running (from Python, as in a notebook, where exiting would
kill the kernel, it raises `SearchInterrupted` instead). `uninstall()` puts back the handlers,
variables and filter that were there before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Ray Tune's own SIGINT handler would replace ours inside `fit` (ray/tune/tune.py,
# _setup_signal_catching); its SIGUSR1 handler, which does the same, stays.
RAY_ENV = {"TUNE_DISABLE_SIGINT_HANDLER": "1"}
# Ray Tune's lines at an interruption point to Tuner.restore, which is not how this tool
# resumes (it would lose the Optuna study, the settings and the clock): the search prints its
# own line instead.
_RAY_LINES = ("Experiment has been interrupted", "Stop signal received")


class SearchInterrupted(Exception):
    """The user stopped the search (Ctrl-C or SIGTERM) outside Ray Tune's trial loop."""


class _DropRayInterruptLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_RAY_LINES)


class StopSignals:
    """Install with `install()`; wrap `Tuner.fit` in `during_fit()`; ask `interrupted`."""

    def __init__(self, exit_on_second: bool = True) -> None:
        self.received: int | None = None  # the first stop signal's number
        # A second signal: os._exit (a command), or SearchInterrupted (a notebook's kernel
        # must live on).
        self.exit_on_second = exit_on_second
        self._in_fit = False  # inside a Ray Tune run (its setup, its loop)
        self._loop_running = False  # Ray Tune's trial loop runs: ask it to stop
        self._deferred = False  # inside Ray's C++ core: only note the signal
        # What install() replaced, for uninstall(); None while not installed.
        self._previous: dict[str, dict] | None = None
        self._filter = _DropRayInterruptLines()

    @property
    def interrupted(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def install(self) -> None:
        """Install (or, called again, re-install over what Ray put in place meanwhile)."""
        global _installed
        if self._previous is None:
            self._previous = {
                "handlers": {sig: signal.getsignal(sig) for sig in STOP_SIGNALS},
                "env": {key: os.environ.get(key) for key in RAY_ENV},
                "installed": {"stop": _installed},
            }
        _installed = self
        for key, value in RAY_ENV.items():
            os.environ[key] = value
        logging.getLogger("ray.tune.tune").addFilter(self._filter)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put back the signal handlers, environment variables and process-wide state as
        install() found them (a no-op if not installed)."""
        global _installed
        if self._previous is None:
            return
        for sig, handler in self._previous["handlers"].items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for key, value in self._previous["env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        logging.getLogger("ray.tune.tune").removeFilter(self._filter)
        _installed = self._previous["installed"]["stop"]
        self._previous = None

    def raise_if_interrupted(self) -> None:
        """After a Ray Tune run: a signal that stopped it ends the search here, before the
        next run starts (that one would not know of it)."""
        if self.interrupted:
            raise SearchInterrupted(self.name)

    @contextlib.contextmanager
    def during_fit(self) -> Iterator[None]:
        """Around one Ray Tune run and the work before it (restoring or making the Tuner):
        a signal before the run's loop starts raises where the program is; one while it runs
        asks Ray Tune to stop. After the run, our handlers are put back for the next step."""
        self.raise_if_interrupted()
        self._in_fit, self._loop_running = True, False
        try:
            yield
        finally:
            self._in_fit, self._loop_running = False, False
            self.reinstall()

    def loop_started(self) -> bool:
        """Ray Tune's trial loop of the current run starts (its SIGUSR1 handler is this
        run's): signals from now on ask it to stop. True if one came before, which the
        caller then passes on to Ray Tune."""
        self._loop_running = self._in_fit
        return self.interrupted

    def reinstall(self) -> None:
        """Put our handlers back: Ray (ray.init, a Tune run) may have replaced them."""
        if _installed is self:
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._handle)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals only noted, not raised: the caller checks `interrupted` afterwards."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            if not self.exit_on_second:
                logger.warning("%s again: stopping now", signal.Signals(signum).name)
                if not self._deferred:
                    raise SearchInterrupted(signal.Signals(signum).name)
                return
            logger.warning("%s again: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        self.received = signum
        ray_tune_stop = signal.getsignal(signal.SIGUSR1)
        if self._in_fit and self._loop_running and callable(ray_tune_stop):
            logger.warning(
                "%s: stopping the search; Ray saves its state (a few seconds); press Ctrl-C "
                "again to quit at once",
                self.name,
            )
            ray_tune_stop(signal.SIGUSR1, frame)
            return
        logger.warning("%s: stopping; press Ctrl-C again to quit at once", self.name)
        if not self._deferred:
            raise SearchInterrupted(self.name)


_installed: StopSignals | None = None  # the process's handler (signals are process-wide)


def installed() -> StopSignals | None:
    """The process's StopSignals, if a command installed one."""
    return _installed


POLL_S = 0.5  # how often a wait on Ray tasks returns to Python, where signal handlers run


def get_interruptibly(refs: list) -> list:
    """`ray.get(refs)`, but a stop signal ends the wait within POLL_S: a plain `ray.get`
    blocks inside Ray's C++ core, where Python runs no signal handler until it returns (and a
    handler that raises there surfaces as a SystemError). Interrupted, the tasks are
    cancelled (what they checkpointed stays, and a resume continues from it) and
    SearchInterrupted is raised."""
    import ray

    stop = _installed
    pending = list(refs)
    while pending:
        if stop is None:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            continue
        with stop.deferred():
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        if stop.interrupted:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise SearchInterrupted(stop.name)
    return ray.get(list(refs))
