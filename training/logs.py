"""Logging for the command-line tools: one look, and -q/--quiet, -v/--verbose on each.

Library modules log through `logging.getLogger(__name__)`; only a command (or a Ray worker
running one of its steps) decides where that goes. Informational lines (epoch progress,
what a search is doing) go to stdout as plain text, as a user reads them; warnings and
errors go to stderr, prefixed "warning: " / "error: ".
"""

from __future__ import annotations

import argparse
import logging
import sys

PROJECT_LOGGERS = ("models", "training", "search_spaces", "tune")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _Console(logging.StreamHandler):
    """A handler for sys.stdout or sys.stderr as they are when a record is written (tests
    and tools swap them), not as they were when logging was set up."""

    def __init__(self, name: str) -> None:
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors (no progress lines)"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="also debugging detail")


def level_from_flags(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):
        return logging.WARNING
    if getattr(args, "verbose", False):
        return logging.DEBUG
    return logging.INFO


def configure_logging(level: int = logging.INFO) -> None:
    """Send the project's log records to stdout (below warnings) and stderr (warnings and
    errors) at `level`. Idempotent: calling it again only changes the level."""
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False  # Ray configures the root logger in its workers
        if any(getattr(h, "_resnet_tune", False) for h in logger.handlers):
            continue
        out = _Console("stdout")
        out.addFilter(_Below(logging.WARNING))
        err = _Console("stderr")
        err.setLevel(logging.WARNING)
        for handler in (out, err):
            handler.setFormatter(_Format("%(message)s"))
            handler._resnet_tune = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


def project_level() -> int:
    """The level configure_logging set (INFO if it was not called), to hand to workers."""
    return logging.getLogger(PROJECT_LOGGERS[0]).getEffectiveLevel()
