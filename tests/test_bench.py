import json

from training import bench


def test_tiny_benchmark_writes_json_and_appends_a_dated_table(tmp_path):
    out, docs = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    assert bench.main(["--tiny", "--mode", "models", "--out", str(out), "--docs", str(docs)]) == 0
    results = json.loads(out.read_text())
    row = results["models"]["tiny_resnet"]
    assert row["params"] == 5266
    for side in ("fast", "usual"):
        assert row[side]["train_images_per_sec"] > 0
        assert row[side]["epoch_seconds"] > 0
    assert row["fast"]["eval_images_per_sec"] > 0
    assert (
        row["speedup"] == row["fast"]["train_images_per_sec"] / row["usual"]["train_images_per_sec"]
    )
    text = docs.read_text()
    assert results["date"] in text and "--tiny" in text and "| tiny_resnet | 5,266 |" in text

    assert bench.main(["--tiny", "--mode", "models", "--out", str(out), "--docs", str(docs)]) == 0
    assert docs.read_text().count("## ") == 2  # appended, not overwritten


def test_tiny_packing_runs_one_two_and_four_trials(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--mode", "packing", "--out", str(out), "--no-docs"]) == 0
    rows = json.loads(out.read_text())["packing"]
    assert [r["concurrent"] for r in rows] == [1, 2, 4]
    assert all(len(r["per_trial"]) == r["concurrent"] for r in rows)
    assert all(r["total_images_per_sec"] > 0 for r in rows)
