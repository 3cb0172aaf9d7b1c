"""The deployment files: valid for the tools that read them, and installing as CI does."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def test_cluster_launcher_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DOCKER / "cluster-aws.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any schema or consistency error
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs the driver, not trials
    workers = [
        t for name, t in config["available_node_types"].items() if name != config["head_node_type"]
    ]
    assert any(
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        for t in workers
    )
    assert all(t["max_workers"] > t["min_workers"] for t in workers)  # autoscaling
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_rayjob_manifest_has_what_kuberay_needs():
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m tune.search ")
    assert "--storage-path s3://" in spec["entrypoint"] and "--address auto" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert (
        head["image"]
        and cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    )
    (gpu,) = cluster["workerGroupSpecs"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["image"] == head["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def test_dockerfile_installs_with_the_ci_script_on_a_pinned_base():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py\d+-gpu", base), base
    runs = re.findall(r"^RUN (.+)$", dockerfile, re.M)
    assert any(r.startswith("bash scripts/setup.sh") for r in runs), runs
    assert "scripts/setup.sh" in (ROOT / ".ci" / "run").read_text()
    # Every package the project needs is copied into the image.
    for package in ("models", "training", "search_spaces", "tune"):
        assert f"COPY --chown=ray:users {package}/ {package}/" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_base_image_ray_matches_the_installed_ray():
    import ray

    base = re.search(
        r"^FROM rayproject/ray:(\d+\.\d+\.\d+)", (DOCKER / "Dockerfile").read_text(), re.M
    )
    assert base.group(1) == ray.__version__, "rebuild the image on the Ray version the project runs"
