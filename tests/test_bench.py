import json
import multiprocessing as mp
import os
import time

import pytest

from benchmarks import bench
from models import SEED_MODELS, ArchConfig, count_macs, count_params, get_arch


def test_tiny_benchmark_writes_json_and_appends_a_dated_table_only_when_asked(tmp_path):
    out, docs = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    assert bench.main(["--tiny", "--mode", "models", "--out", str(out)]) == 0
    assert not docs.exists()
    assert bench.main(["--tiny", "--mode", "models", "--out", str(out), "--docs", str(docs)]) == 0
    results = json.loads(out.read_text())
    row = results["models"]["tiny_resnet"]
    assert row["params"] == 5266 and row["macs"] == count_macs(get_arch("tiny_resnet"))
    assert set(row["variants"]) == set(bench.VARIANTS)
    for side in (*row["variants"].values(), row["usual"]):
        assert side["train_images_per_sec"] > 0
        assert side["epoch_seconds"] > 0
    ours = row["variants"]["ours"]
    assert ours["eval_images_per_sec"] > 0 and ours["compile_seconds"] == 0.0
    assert row["speedup"] == ours["train_images_per_sec"] / row["usual"]["train_images_per_sec"]
    text = docs.read_text()
    assert results["date"] in text and "--tiny" in text and "| tiny_resnet | 5,266 |" in text
    assert "| tiny_resnet | ours, fp32 |" in text

    assert bench.main(["--tiny", "--mode", "models", "--out", str(out), "--docs", str(docs)]) == 0
    assert docs.read_text().count("## ") == 2  # appended, not overwritten


def test_space_mode_times_the_samples_with_the_most_multiply_adds(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--mode", "space", "--out", str(out)]) == 0
    space = json.loads(out.read_text())["space"]
    assert space["name"] == "tiny" and space["samples"] == bench.TINY.space_samples
    top = space["top"]
    assert len(top) == bench.TINY.space_top
    assert [t["macs"] for t in top] == sorted((t["macs"] for t in top), reverse=True)
    assert space["median"]["macs"] <= top[-1]["macs"]
    for t in top:
        arch = ArchConfig.from_dict(t["arch"])
        assert t["params"] == count_params(arch) <= space["budget"]
        assert t["macs"] == count_macs(arch)
        assert t["fast"]["epoch_seconds"] > 0


def test_sample_space_fits_the_budget_and_sorts_by_multiply_adds():
    samples = bench.sample_space("efficient_resnet", 4, budget=2_000_000, seed=3)
    assert len(samples) == 4
    assert all(s["params"] <= 2_000_000 for s in samples)
    assert [s["macs"] for s in samples] == sorted((s["macs"] for s in samples), reverse=True)
    assert bench.median_sample(samples)["macs"] in [s["macs"] for s in samples]


@pytest.mark.slow
def test_tiny_packing_runs_one_two_and_four_trials_per_model(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--mode", "packing", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["packing"]) == {"tiny_resnet", "median tiny sample"}
    for rows in results["packing"].values():
        assert [r["concurrent"] for r in rows] == [1, 2, 4]
        assert all(len(r["per_trial"]) == r["concurrent"] for r in rows)
        assert all(r["total_images_per_sec"] > 0 for r in rows)


def test_profile_reports_kernels_and_the_busy_share(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--mode", "profile", "--out", str(out)]) == 0
    profile = json.loads(out.read_text())["profile"]
    assert profile["model"] == "tiny_resnet" and profile["epoch_seconds_profiled"] > 0
    assert "convolution" in profile["top_kernels"]
    assert profile["device_busy_fraction"] == 0.0  # a CPU run launches no device kernels


@pytest.mark.parametrize(
    ("totals", "expected"),
    [
        ((100, 105, 108), 1.0),  # packing gains less than 10%: one trial per GPU
        ((100, 150, 160), 0.5),  # two gain, four add little over two
        ((100, 150, 200), 0.25),
        ((100, 90, 200), 0.25),  # four beat one by far even though two did not
    ],
)
def test_pick_gpus_per_trial_follows_the_packing_gain(totals, expected):
    rows = [
        {"concurrent": k, "total_images_per_sec": t} for k, t in zip((1, 2, 4), totals, strict=True)
    ]
    assert bench.pick_gpus_per_trial(rows) == expected


def test_a_failed_measurement_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def no_shared_memory(*args, **kwargs):
        raise RuntimeError("DataLoader worker exited: insufficient shared memory")

    monkeypatch.setattr(bench, "bench_usual", no_shared_memory)
    out, docs = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    argv = ["--tiny", "--mode", "models", "--out", str(out), "--docs", str(docs)]
    assert bench.main(argv) == 1
    results = json.loads(out.read_text())
    assert "shared memory" in results["errors"]["tiny_resnet: usual loop"]
    row = results["models"]["tiny_resnet"]
    assert set(row["variants"]) == set(bench.VARIANTS) and "usual" not in row
    text = docs.read_text()
    assert "failed" in text and "**Failed**: tiny_resnet: usual loop" in text


@pytest.mark.parametrize(
    ("target", "args", "reason"),
    [(os._exit, (3,), "died with exit code 3"), (time.sleep, (60,), "still running after 1 s")],
)
def test_a_dead_or_stuck_packed_trial_is_reported_not_waited_for(target, args, reason):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args)]
    procs[0].start()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=reason):
        bench._collect(procs, ctx.Queue(), timeout_s=1.0)
    assert time.monotonic() - started < 20 and not procs[0].is_alive()


def test_overhead_mode_measures_the_trials_report_and_checkpoints_per_epoch(tmp_path):
    out, docs = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    argv = ["--tiny", "--mode", "overhead", "--checkpoint-every", "1000"]
    assert bench.main([*argv, "--out", str(out), "--docs", str(docs)]) == 0
    overhead = json.loads(out.read_text())["overhead"]
    assert overhead["model"] == "tiny_resnet"
    rows = overhead["rows"]
    assert [r["checkpoint_every_s"] for r in rows] == [0.0, 1000.0, 0.0, 1000.0]
    epochs = bench.TINY.overhead_epochs
    for r in rows:
        # Every epoch, or only after the last one when the interval is longer than the run.
        assert r["checkpoints"] == (epochs if r["checkpoint_every_s"] == 0 else 1)
        assert r["share"] == pytest.approx(r["report_seconds_per_epoch"] / r["epoch_seconds"])
        assert r["report_seconds_per_epoch"] > 0
    assert "| 1000 s | 4 | 1 |" in docs.read_text()


def test_seed_recipes_time_each_seed_network_as_a_reduced_trial_trains_it(tmp_path):
    """--seed-recipes: one epoch of each seed network at its own recipe, fitted to --budget
    and with the batch a trial without a GPU gets (at most 128, and a tenth of the images);
    --fit-presets fits the preset to the same budget (what the campaign's rehearsal plans
    from)."""
    out, docs = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    argv = ["--tiny", "--mode", "models", "--models", "efficient_resnet", "--fit-presets"]
    argv += ["--budget", "30000", "--seed-recipes", "--threads", "1"]
    assert bench.main([*argv, "--out", str(out), "--docs", str(docs)]) == 0
    results = json.loads(out.read_text())
    assert results["models"]["efficient_resnet"]["params"] <= 30_000
    seeds = results["seed_recipes"]
    assert set(seeds) == set(SEED_MODELS.values())
    for r in seeds.values():
        assert r["params"] <= 30_000 and r["images"] == bench.TINY.seed_images
        assert r["batch_size"] <= bench.TINY.seed_images // 10  # a tenth of the images
        assert r["epoch_seconds"] > 0
        assert r["train_images_per_sec"] == pytest.approx(
            r["images"] / r["epoch_seconds"], rel=0.05
        )
    assert "| se_mish_resnet |" in docs.read_text()
