import pytest

from tune.storage import ExperimentStorage, StorageError


def test_local_storage_is_the_experiment_folder(tmp_path):
    storage = ExperimentStorage(str(tmp_path), "exp")
    assert storage.local_dir == tmp_path / "exp" and storage.uri == str(tmp_path / "exp")
    storage.check_writable()
    assert (tmp_path / "exp").is_dir() and not list((tmp_path / "exp").iterdir())


def test_uri_storage_stages_locally_and_copies_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr("tune.storage.STAGING_ROOT", tmp_path / "cache")
    remote = tmp_path / "bucket"
    storage = ExperimentStorage(f"file://{remote}", "exp")
    storage.check_writable()
    assert storage.local_dir == tmp_path / "cache" / "staging" / "exp"
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


def test_unreachable_cloud_storage_fails_fast_with_the_uri(monkeypatch):
    # A closed loopback port stands in for an unreachable S3 endpoint (no traffic leaves).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = "s3://no-such-bucket/exp?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    with pytest.raises(StorageError, match="no-such-bucket"):
        ExperimentStorage(uri, "exp").check_writable(timeout_s=20)


def test_bad_uri_is_refused():
    with pytest.raises(StorageError, match="nosuchscheme"):
        ExperimentStorage("nosuchscheme://x/y", "exp")
