"""The search command: `python -m tune.search --space efficient_resnet --data DIR`.

The search itself is tune.api's (`run_search`, which the Python entry point `tune.api.search`
runs too); this module parses the command line and turns the search's exceptions into the
command's messages and exit codes. Each step lives in the module it names: the arguments
(tune.cli), the experiment's settings and storage (tune.settings), Ray and the trials
(tune.runner, tune.trainable), and what comes after them: the finalists, the winner, the
retrains and the comparison with the seed baseline (tune.finalize, tune.compare). The arguments are parsed and checked before anything imports torch or Ray, so
`--help`, a mistyped option, an unknown space or a missing data path answer at once. Ctrl-C or
SIGTERM stops a search cleanly (tune.interrupt). Every command line it prints names the Python
that runs it, so it works pasted into the same shell.
"""

from __future__ import annotations

import logging
import sys

from training.logs import configure_logging, level_from_flags
from tune.api import SearchError, resume_command, run_search
from tune.cli import build_parser, format_space_list
from tune.interrupt import SearchInterrupted, StopSignals

logger = logging.getLogger("tune.search")
__all__ = ["main", "resume_command"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    configure_logging(level_from_flags(args))
    if args.list_spaces:
        print(format_space_list())
        return 0
    stop = StopSignals()
    started: list[str] = []  # the experiment's name, once it exists
    try:
        run_search(args, stop, started, argv=argv)
        return 0
    except SearchError as e:
        logger.error(e)
        return e.exit_code
    except SearchInterrupted:
        pass
    if started:
        logger.error("stopped by %s; resume with: %s", stop.name, resume_command(argv, started[0]))
    else:
        logger.error("stopped by %s before the search started; nothing to resume", stop.name)
    return 128 + (stop.received or 2)


if __name__ == "__main__":
    sys.exit(main())
