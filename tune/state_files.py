"""Every state file of an experiment, a last good copy of each, and the check a resume makes
before Ray starts.

A machine reclaimed mid-write (or a sync cut off) leaves a file truncated. Ray then fails in
its own ways on resume: a traceback for `tuner.pkl`; for `experiment_state-*.json` or the
searcher's state, "Failed to restore the run state" and a run started over that loses the
finished trials from the results; SQLite's "database disk image is malformed" for the study.
So the search keeps a copy of each state file that reads back whole (tune.callbacks.
StateSnapshots, into SNAPSHOT_DIR inside the experiment), and a resume checks every file
first: a damaged or missing one with a good copy is restored from it; one without stops the
command with one message that names the file, what is intact and the command that carries
on (`DamagedExperiment`).

The files, by how they are read (measured on a search of the pinned Ray, 2.60):

| file | written by | format |
|---|---|---|
| `tuner.pkl` | Ray, at the start | pickle |
| `experiment_state-*.json` | Ray, every few seconds (not atomically) | JSON |
| `search_gen_state-*.json`, `basic-variant-state-*.json`, `callback-states-*.pkl` | Ray | pickle, whatever the name |
| `searcher-state-*.pkl` | our searchers (tune.searcher, tune.fixed_trials) | JSON, whatever the name |
| `study.db` | the Optuna study | SQLite |
| `search_settings.json`, `search_clock.txt` | this project | JSON |
| `trial_*/params.pkl`, `trial_*/params.json` | Ray, once per trial | pickle, JSON |
| `trial_*/checkpoint_*/checkpoint.pt` | the trials | torch's zip |
| `trial_*/result.json` | Ray, a line per epoch | JSON lines |

The same Ray files in `finalists/` and `baseline/`, the experiment's other Ray runs. Ray does
not read a trial's `params.pkl` or `result.json` to resume, but the results table reads
`result.json` (a cut one loses that trial's history from it: "Failed to fetch metrics"), so
it is kept too. `progress.csv` holds the same and is not read when `result.json` is whole.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickletools
import shutil
import sqlite3
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = ".last_good"  # inside the experiment folder, beside what it keeps
RAY_RUNS = ("", "finalists", "baseline")  # the experiment's Ray runs, as sub-folders

# (pattern relative to a Ray run's folder, kind)
_RAY_FILES = (
    ("tuner.pkl", "pickle"),
    ("experiment_state-*.json", "json"),
    ("search_gen_state-*.json", "pickle"),
    ("basic-variant-state-*.json", "pickle"),
    ("callback-states-*.pkl", "pickle"),
    ("searcher-state-*.pkl", "json or pickle"),
    ("trial_*/params.pkl", "pickle"),
    ("trial_*/params.json", "json"),
    ("trial_*/checkpoint_*/checkpoint.pt", "zip"),
    ("trial_*/result.json", "json lines"),
)
_OWN_FILES = (
    ("study.db", "sqlite"),
    ("search_settings.json", "json"),
    ("search_clock.txt", "json"),
)


@dataclass(frozen=True)
class StateFile:
    path: str  # relative to the experiment folder, with "/"
    kind: str


class DamagedExperiment(ValueError):
    """A state file of the experiment is damaged and has no good copy: the experiment
    cannot be resumed. `can_warm_start`: its study and settings are whole, so a new
    experiment can start from its trials."""

    def __init__(self, root: Path, damaged: dict[str, str]) -> None:
        self.root, self.damaged = root, damaged
        self.intact = intact_summary(root, damaged)
        self.can_warm_start = not {"study.db", "search_settings.json"} & set(damaged)
        super().__init__(self.message(None))

    def message(self, carry_on: str | None) -> str:
        files = "; ".join(f"{self.root / f} ({why})" for f, why in sorted(self.damaged.items()))
        text = (
            f"experiment {self.root} cannot be resumed: {files}, with no good copy to restore "
            f"{'it' if len(self.damaged) == 1 else 'them'} from. Intact: {self.intact}."
        )
        if carry_on:
            text += (
                " Carry on with a new experiment warm-started from its finished trials: "
                if self.can_warm_start
                else " Start a new experiment (its trials cannot be carried over): "
            ) + carry_on
        return text


# --- what the files are ----------------------------------------------------------------------


def state_files(root: Path) -> list[StateFile]:
    """The state files present in the experiment folder `root`."""
    found = set()
    for run in RAY_RUNS:
        base = root / run if run else root
        for pattern, kind in _RAY_FILES:
            for path in base.glob(pattern):
                if path.is_file() and not path.name.startswith(".tmp"):
                    found.add(StateFile(path.relative_to(root).as_posix(), kind))
    for pattern, kind in _OWN_FILES:
        if (root / pattern).is_file():
            found.add(StateFile(pattern, kind))
    return sorted(found, key=lambda f: f.path)


# --- whether a file reads back whole ----------------------------------------------------------


def _check_pickle(data: bytes) -> None:
    """Walks the pickle's opcodes (runs none of them): a truncated or garbled stream, or one
    with bytes after its end, is refused. Nothing is unpickled, so nothing runs."""
    if not data:
        raise ValueError("empty")
    stream = io.BytesIO(data)
    last = None
    for op, _, _ in pickletools.genops(stream):
        last = op.name
    if last != "STOP" or stream.tell() != len(data):
        raise ValueError("pickle data ends early or has bytes after its end")


def _check_json(data: bytes) -> None:
    if not data.strip():
        raise ValueError("empty")
    json.loads(data)


def _check_json_lines(data: bytes) -> None:
    """Empty is whole (a trial that has not reported yet); else every line parses and the
    last one ends."""
    if data and not data.endswith(b"\n"):
        raise ValueError("the last line is cut off")
    for line in data.splitlines():
        json.loads(line)


def _check_sqlite(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ValueError("empty")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()
        if not result or result[0] != "ok":
            raise ValueError(f"integrity check: {result[0] if result else 'no answer'}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "trials" not in tables:
            raise ValueError("no Optuna trials table")
    except sqlite3.DatabaseError as e:
        raise ValueError(str(e)) from None
    finally:
        conn.close()


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(str(e) or "not a zip archive") from None
    if bad is not None:
        raise ValueError(f"{bad} fails its CRC check")


def problem(path: Path, kind: str) -> str | None:
    """Why the file at `path` is not whole, or None if it reads back whole."""
    try:
        if kind == "sqlite":
            _check_sqlite(path)
        elif kind == "zip":
            _check_zip(path)
        else:
            data = path.read_bytes()
            if kind == "pickle":
                _check_pickle(data)
            elif kind == "json":
                _check_json(data)
            elif kind == "json lines":
                _check_json_lines(data)
            elif data[:1] == b"\x80":  # "json or pickle": a pickle begins with PROTO
                _check_pickle(data)
            else:
                _check_json(data)
    except FileNotFoundError:
        return "missing"
    except (ValueError, OSError, UnicodeDecodeError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


# --- keeping and restoring copies -------------------------------------------------------------


def _copy_whole(src: Path, dest: Path, kind: str) -> None:
    """`src` to `dest` through a temporary file and a rename: `dest` is the old or the new
    file, never half of one. A database is copied with SQLite's backup API, which copies a
    consistent state even while the study writes to it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        if kind == "sqlite":
            source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        else:
            shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def keep_good_copies(root: Path, seen: dict[str, tuple[int, int]]) -> int:
    """Copy each state file of `root` that changed since `seen` (size and mtime by path,
    updated here) and reads back whole into root/SNAPSHOT_DIR; drop copies of checkpoints
    Ray has deleted. The number of files copied."""
    copies = root / SNAPSHOT_DIR
    copied = 0
    present = state_files(root)
    for file in present:
        src = root / file.path
        try:
            stat = src.stat()
        except FileNotFoundError:
            continue
        stamp = (stat.st_size, stat.st_mtime_ns)
        if seen.get(file.path) == stamp or problem(src, file.kind) is not None:
            continue
        _copy_whole(src, copies / file.path, file.kind)
        if problem(copies / file.path, file.kind) is None:
            seen[file.path] = stamp
            copied += 1
    # Ray keeps one checkpoint a trial: once a newer one is copied, the older copy goes.
    kept = {f.path for f in present}
    pattern = "trial_*/checkpoint_*/checkpoint.pt"
    for old in [*copies.glob(pattern), *copies.glob(f"*/{pattern}")]:
        relative = old.relative_to(copies).as_posix()
        trial = old.parent.parent
        newer = [c for c in trial.glob("checkpoint_*") if c.name > old.parent.name]
        if relative not in kept and newer:
            shutil.rmtree(old.parent, ignore_errors=True)
    return copied


@dataclass
class Recovery:
    restored: list[str]  # files restored from their last good copy
    damaged: dict[str, str]  # file -> what is wrong, for files without a good copy


def _expected_missing(root: Path) -> dict[str, str]:
    """Files whose absence means damage: a Ray run with an experiment state has a tuner.pkl
    and its searcher's state; a search that started its study has study.db."""
    missing = {}
    for run in RAY_RUNS:
        base = root / run if run else root
        if not any(base.glob("experiment_state-*.json")):
            continue
        prefix = f"{run}/" if run else ""
        if not (base / "tuner.pkl").exists():
            missing[f"{prefix}tuner.pkl"] = "pickle"
        searchers = ("search_gen_state-*.json", "basic-variant-state-*.json")
        if not any(any(base.glob(p)) for p in searchers):
            missing[f"{prefix}search_gen_state-*.json"] = "pickle"
        if (
            not run
            and any(base.glob("search_gen_state-*.json"))
            and not (root / "study.db").exists()
        ):
            missing["study.db"] = "sqlite"
    return missing


def check_and_restore(root: Path) -> Recovery:
    """Check every state file of the experiment folder `root` (and every file that has a
    copy); restore each damaged or missing one that has a good copy. Nothing else changes."""
    copies = root / SNAPSHOT_DIR
    files = {f.path: f.kind for f in state_files(root)}
    if copies.is_dir():
        for file in state_files(copies):
            files.setdefault(file.path, file.kind)
    recovery = Recovery(restored=[], damaged={})
    for relative, kind in sorted(files.items()):
        wrong = problem(root / relative, kind)
        if wrong is None:
            continue
        copy = copies / relative
        if copy.is_file() and problem(copy, kind) is None:
            _copy_whole(copy, root / relative, kind)
            logger.warning(
                "%s was damaged (%s): restored it from its last good copy in %s/",
                root / relative,
                wrong,
                SNAPSHOT_DIR,
            )
            recovery.restored.append(relative)
        elif wrong == "missing" and relative.count("/checkpoint_"):
            continue  # an old checkpoint Ray deleted; its copy is an orphan
        else:
            recovery.damaged[relative] = wrong
    for relative in _expected_missing(root):
        if "*" not in relative and (root / relative).exists():
            continue
        recovery.damaged.setdefault(relative, "missing")
    return recovery


def recover(root: Path) -> list[str]:
    """Before a resume: restore what can be restored (the files restored); raise
    DamagedExperiment if something cannot."""
    recovery = check_and_restore(root)
    if recovery.damaged:
        raise DamagedExperiment(root, recovery.damaged)
    return recovery.restored


# --- what is intact, for the message ----------------------------------------------------------


def intact_summary(root: Path, damaged: dict[str, str]) -> str:
    """What of the experiment still reads back: the study's trials, the checkpoints, the
    trials' results."""
    parts = []
    study = root / "study.db"
    if "study.db" not in damaged and problem(study, "sqlite") is None:
        conn = sqlite3.connect(f"file:{study}?mode=ro", uri=True)
        try:
            counts = dict(conn.execute("SELECT state, count(*) FROM trials GROUP BY state"))
        finally:
            conn.close()
        total = sum(counts.values())
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        parts.append(
            f"the Optuna study (study.db: {total} trials{': ' + states if states else ''})"
        )
    checkpoints = [
        p for p in root.glob("trial_*/checkpoint_*/checkpoint.pt") if problem(p, "zip") is None
    ]
    results = [p for p in root.glob("trial_*/result.json") if p.stat().st_size > 0]
    parts.append(f"{len(checkpoints)} trial checkpoint(s)")
    parts.append(f"{len(results)} trial(s)' per-epoch results (trial_*/result.json)")
    return "; ".join(parts)
