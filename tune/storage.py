"""Where an experiment's own files live: a local (or shared) folder, or a cloud URI.

Ray writes the trials (results, checkpoints, TensorBoard events) to `--storage-path` itself.
The files this project writes beside them (settings, trials.parquet, best_config.json,
final/, report.md) are written to a local folder first, whole, and then copied to the
storage path through pyarrow's filesystems (s3://, gs://, and others pyarrow knows).
For a local storage path the local folder *is* the experiment folder and nothing is copied.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.fs as pafs

from training.artifacts import CACHE_ROOT

STAGING_ROOT = CACHE_ROOT / "staging"  # local copies of experiments on cloud storage


class StorageError(ValueError):
    """The storage path cannot be used: not writable, or not reachable."""


def is_uri(path: str) -> bool:
    return "://" in path


class ExperimentStorage:
    def __init__(self, storage_path: str, name: str) -> None:
        self.storage_path = storage_path
        self.name = name
        if is_uri(storage_path):
            try:
                self.fs, root = pafs.FileSystem.from_uri(storage_path)
            except Exception as e:  # pyarrow raises several types for bad URIs
                raise StorageError(
                    f"--storage-path {storage_path} is not a storage URI pyarrow can open: {e}"
                ) from None
            self.remote_dir: str | None = f"{root.rstrip('/')}/{name}"
            self.local_dir = STAGING_ROOT / name
        else:
            self.fs = None
            self.remote_dir = None
            self.local_dir = Path(storage_path) / name

    @property
    def uri(self) -> str:
        """The experiment folder as a user (and TensorBoard) names it."""
        return (
            f"{self.storage_path.rstrip('/')}/{self.name}"
            if self.remote_dir
            else str(self.local_dir)
        )

    def check_writable(self, timeout_s: float = 30.0) -> None:
        """Write and delete a probe file, so a bad path fails before any work starts; leave
        nothing behind (no experiment folder) if the search then stops on another error."""
        probe = ".write_probe"
        existing = self.local_dir
        while not existing.exists():  # probe where the folder would be created, not in it
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "a file is in the way", str(existing))
            (existing / probe).write_text("ok")
            (existing / probe).unlink()
        except OSError as e:
            raise StorageError(
                f"cannot write to {self.local_dir} ({e.strerror}: {existing}); pass a "
                "--storage-path you can write to"
            ) from None
        if self.remote_dir is None:
            return

        def probe_remote() -> None:
            is_new = self.fs.get_file_info(self.remote_dir).type == pafs.FileType.NotFound
            self.fs.create_dir(self.remote_dir, recursive=True)
            with self.fs.open_output_stream(f"{self.remote_dir}/{probe}") as out:
                out.write(b"ok")
            self.fs.delete_file(f"{self.remote_dir}/{probe}")
            if is_new:
                self.fs.delete_dir(self.remote_dir)

        # Cloud clients retry for minutes when there is no network: probe in a daemon thread
        # (one that cannot hold up the program's exit) and give up sooner.
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                probe_remote()
                outcome.append(None)
            except Exception as e:  # pyarrow raises OSError and others
                outcome.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout_s)
        if not outcome:
            raise StorageError(
                f"{self.uri} did not answer within {timeout_s:.0f} s; check the network and "
                "the URI, or pass a local --storage-path"
            )
        if outcome[0] is not None:
            raise StorageError(
                f"cannot reach or write {self.uri}: {str(outcome[0]).splitlines()[0]}; check the "
                "URI, the credentials (e.g. AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) and the "
                "network, or pass a local --storage-path"
            )

    def pull(self, relative: str) -> bool:
        """Copy a file or folder of the experiment from storage to the local folder, if it
        exists there. True if something was copied."""
        if self.remote_dir is None:
            return (self.local_dir / relative).exists()
        source = f"{self.remote_dir}/{relative}"
        info = self.fs.get_file_info(source)
        if info.type == pafs.FileType.NotFound:
            return False
        target = self.local_dir / relative
        if info.type == pafs.FileType.Directory:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            source,
            str(target),
            source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return True

    def push(self, *relatives: str) -> None:
        """Copy files or folders of the local experiment folder to storage."""
        if self.remote_dir is None:
            return
        for relative in relatives:
            source = self.local_dir / relative
            if not source.exists():
                continue
            target = f"{self.remote_dir}/{relative}"
            self.fs.create_dir(
                target if source.is_dir() else target.rsplit("/", 1)[0], recursive=True
            )
            if source.is_dir():  # copy_files writes into existing sub-folders only
                for sub in source.rglob("*"):
                    if sub.is_dir():
                        self.fs.create_dir(f"{target}/{sub.relative_to(source)}", recursive=True)
            pafs.copy_files(
                str(source),
                target,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.fs,
            )
