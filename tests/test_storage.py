import optuna
import pytest

from tune.storage import ExperimentStorage, StorageError


def test_local_storage_is_the_experiment_folder(tmp_path):
    storage = ExperimentStorage(str(tmp_path), "exp")
    assert storage.local_dir == tmp_path / "exp" and storage.uri == str(tmp_path / "exp")
    storage.check_writable()
    # The probe leaves nothing: the experiment folder appears with the experiment's files.
    assert not (tmp_path / "exp").exists() and not list(tmp_path.iterdir())


def test_uri_storage_stages_locally_and_copies_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr("tune.storage.STAGING_ROOT", tmp_path / "cache")
    remote = tmp_path / "bucket"
    storage = ExperimentStorage(f"file://{remote}", "exp")
    storage.check_writable()
    assert storage.local_dir == tmp_path / "cache" / "exp"
    (storage.local_dir / "final").mkdir(parents=True)
    (storage.local_dir / "final" / "metrics.json").write_text('{"a": 1}')
    (storage.local_dir / "trials.parquet").write_bytes(b"PAR1")
    storage.push("trials.parquet", "final", "missing.json")
    assert (remote / "exp" / "trials.parquet").read_bytes() == b"PAR1"
    assert (remote / "exp" / "final" / "metrics.json").read_text() == '{"a": 1}'

    fresh = ExperimentStorage(f"file://{remote}", "exp")
    fresh.local_dir = tmp_path / "elsewhere"
    assert fresh.pull("final") and not fresh.pull("nothing_here")
    assert (tmp_path / "elsewhere" / "final" / "metrics.json").read_text() == '{"a": 1}'


def test_unwritable_path_under_a_file_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="a_file"):
        ExperimentStorage(str(blocker), "exp").check_writable()


def test_unreachable_cloud_storage_fails_fast_with_the_uri(monkeypatch, tmp_path):
    # A closed loopback port stands in for an unreachable S3 endpoint (no traffic leaves).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("tune.storage.STAGING_ROOT", tmp_path / "cache")
    uri = "s3://no-such-bucket/exp?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    with pytest.raises(StorageError, match="no-such-bucket"):
        ExperimentStorage(uri, "exp").check_writable(timeout_s=20)


def test_bad_uri_is_refused():
    with pytest.raises(StorageError, match="nosuchscheme"):
        ExperimentStorage("nosuchscheme://x/y", "exp")


@pytest.mark.slow
def test_search_with_a_uri_storage_path_lands_everything_there_and_resumes(tmp_path):
    """A `file://` URI takes the same path as s3:// or gs:// (pyarrow, staging, copy)."""
    from tests.conftest import write_python_batches
    from tests.searchrun import check_ok, read_table, search

    data = write_python_batches(tmp_path / "data", n_train=200, n_test=50)
    bucket = tmp_path / "bucket"
    cache = tmp_path / "cache"
    args = [
        "--space", "tiny", "--data", str(data), "--num-samples", "2", "--max-epochs", "2",
        "--subset", "160", "--storage-path", f"file://{bucket}", "--name", "remote",
    ]  # fmt: skip
    run = search(args, tmp_path / "first", env={"RESNET_TUNE_CACHE": str(cache)})
    check_ok(run)
    exp = bucket / "remote"
    for name in ("search_settings.json", "trials.parquet", "best_config.json", "report.md",
                 "rungs.png", "final/metrics.json", "final/seed_0/checkpoint.pt",
                 "study.db"):  # fmt: skip
        assert (exp / name).is_file(), name
    study = optuna.load_study(study_name="remote", storage=f"sqlite:///{exp}/study.db")
    assert sorted(t.number for t in study.trials) == [0, 1]
    assert len(read_table(exp)) == 2
    assert all((d / "tensorboard").is_dir() for d in exp.glob("trial_*"))
    assert (cache / "staging" / "remote" / "trials.parquet").is_file()  # written there first

    # Resume from the storage path alone, from a machine with an empty staging folder.
    run = search(["--resume", "--name", "remote", "--storage-path", f"file://{bucket}"],
                 tmp_path / "second", env={"RESNET_TUNE_CACHE": str(tmp_path / "cache2")})  # fmt: skip
    check_ok(run)
    assert "continuing experiment" in run.stdout and "already finished, kept" in run.stdout
    assert len(read_table(exp)) == 2
    # The study came down with the settings and went back up: still the same two trials.
    assert (tmp_path / "cache2" / "staging" / "remote" / "study.db").is_file()
    study = optuna.load_study(study_name="remote", storage=f"sqlite:///{exp}/study.db")
    assert sorted(t.number for t in study.trials) == [0, 1]
