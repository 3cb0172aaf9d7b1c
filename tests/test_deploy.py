"""The deployment files, read for what each cluster path needs to start, authenticate, scale
and reach storage; and the trial concurrency that an autoscaler sees as demand.

(The Jobs API itself is exercised end to end in tests/test_jobs_api.py.)"""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from tune.cli import UNLIMITED_SAMPLES
from tune.ray_compat import launcher_node_types
from tune.runner import trial_concurrency
from tune.settings import SearchSettings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _flag(command: str, name: str) -> str:
    words = shlex.split(command)
    return words[words.index(name) + 1]


# --- the image ------------------------------------------------------------------------------


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_the_image_installs_the_project_into_the_base_pythons_one_environment():
    steps = _instructions(_dockerfile())
    text = "\n".join(steps)
    # No second environment and nothing a cluster node does not run.
    for forbidden in (
        "venv",
        "virtualenv",
        "setup.sh",
        "pytest",
        "ruff",
        "[dev]",
        "pip install -e",
    ):
        assert forbidden not in text, forbidden
    # The base image's PATH (its own Python first) stays what both launchers run.
    assert not any(s.startswith("ENV PATH") or " PATH=" in s for s in steps if s.startswith("ENV"))
    runs = [s for s in steps if s.startswith("RUN ")]
    (project_install,) = [r for r in runs if "pip install" in r and "torch torchvision" not in r]
    assert "/tmp/resnet-tune" in project_install and "--editable" not in project_install
    # Every package setuptools would find is copied in, so the wheel is whole.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in include["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY --chown=ray:users {package}/ /tmp/resnet-tune/{package}/" in text, package
    # The image proves at build time that the Jobs API (ray[default]) and the project import.
    assert "import ray.dashboard.modules.job.sdk" in text and "tune.search" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_images_ray_cuda_and_torch_agree():
    import ray

    dockerfile = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    assert args["RAY_VERSION"] == ray.__version__, "rebuild the image on the Ray the project runs"
    assert re.fullmatch(r"cu\d{3}", args["CUDA"]), args["CUDA"]
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{CUDA\}$", dockerfile, re.M)
    # torch comes from the index of the base image's CUDA, pinned to the pair CI tests.
    torch_step = next(s for s in _instructions(dockerfile) if "torch torchvision" in s)
    assert "--index-url https://download.pytorch.org/whl/${CUDA}" in torch_step.replace('"', "")
    assert "-c /tmp/resnet-tune/constraints.txt" in torch_step
    assert "pip install -q -c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()
    pins = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    assert set(pins) == {"torch", "torchvision"}
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == pins["torch"]
    assert torchvision.__version__.split("+")[0] == pins["torchvision"]


# --- the cluster launcher -------------------------------------------------------------------


def _launcher_config() -> dict:
    return yaml.safe_load((DOCKER / "cluster-aws.yaml").read_text())


def test_cluster_launcher_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_launcher_config()))  # raises on a schema or consistency error


def test_launcher_workers_scale_on_spot_and_only_gpu_workers_get_the_gpu():
    config = _launcher_config()
    head_type = config["head_node_type"]
    head = config["available_node_types"][head_type]
    assert head["resources"] == {"CPU": 0}  # the head runs the driver, not trials
    assert "docker" not in head
    docker = config["docker"]
    assert "--gpus all" not in docker.get("run_options", []) + docker.get("head_run_options", [])
    workers = {k: v for k, v in config["available_node_types"].items() if k != head_type}
    assert workers
    for name, worker in workers.items():
        assert worker["max_workers"] > worker["min_workers"] == 0, name  # scales from zero
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        has_gpu = worker["resources"].get("GPU", 0) > 0
        assert ("--gpus all" in worker.get("docker", {}).get("worker_run_options", [])) == has_gpu
    assert any(w["resources"].get("GPU", 0) > 0 for w in workers.values())


def test_launcher_nodes_all_start_ray_with_token_authentication():
    config = _launcher_config()
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts), key
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` only
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start


def _statements(policy: str) -> list[dict]:
    document = json.loads((DOCKER / policy).read_text())
    assert document["Version"] == "2012-10-17"
    return document["Statement"]


def _actions(statements: list[dict]) -> set[str]:
    return {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}  # fmt: skip


def test_launcher_head_may_launch_workers_and_hand_them_their_role():
    config = _launcher_config()
    head = config["available_node_types"][config["head_node_type"]]
    worker_profiles = {
        t["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
        for name, t in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    assert head["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1] not in worker_profiles
    head_policy = _statements("aws-head-policy.json")
    needed = {
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "ec2:CreateTags",
        "ec2:DescribeInstances",
    }
    assert needed <= _actions(head_policy)
    (pass_role,) = [s for s in head_policy if s["Action"] == "iam:PassRole"]
    assert pass_role["Resource"].rsplit("/", 1)[1] in worker_profiles  # only the workers' role
    worker_policy = _statements("aws-worker-policy.json")
    assert not any(a.startswith(("ec2:", "iam:")) for a in _actions(worker_policy))
    for policy in (head_policy, worker_policy):
        assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject"} <= _actions(policy)


# --- KubeRay ---------------------------------------------------------------------------------

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
_COUNT = {"type": "integer", "minimum": 0}


def _fields(required: tuple[str, ...] = (), **properties: dict) -> dict:
    """An object with exactly these fields: a misspelt one fails validation, which the API
    server would otherwise prune without a word (it does not reject unknown fields of a CRD)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(required),
        "properties": properties,
    }


# The RayJob fields this project uses, as KubeRay's ray.io/v1 CRD (v1.5.1 and later) declares
# them: names and types.
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": _fields(
            ("entrypoint", "rayClusterSpec"),
            entrypoint={"type": "string"},
            shutdownAfterJobFinishes={"type": "boolean"},
            ttlSecondsAfterFinished=_COUNT,
            rayClusterSpec=_fields(
                ("headGroupSpec",),
                rayVersion={"type": "string"},
                authOptions=_fields(
                    mode={"enum": ["disabled", "token"]}, secretName={"type": "string"}
                ),
                enableInTreeAutoscaling={"type": "boolean"},
                autoscalerOptions=_fields(
                    upscalingMode={"enum": ["Default", "Aggressive", "Conservative"]},
                    idleTimeoutSeconds={"type": "integer"},
                ),
                headGroupSpec=_fields(
                    ("template",), rayStartParams=_STR_MAP, template=_POD_TEMPLATE
                ),
                workerGroupSpecs={
                    "type": "array",
                    "items": _fields(
                        ("groupName", "template"),
                        groupName={"type": "string"},
                        replicas=_COUNT,
                        minReplicas=_COUNT,
                        maxReplicas=_COUNT,
                        rayStartParams=_STR_MAP,
                        template=_POD_TEMPLATE,
                    ),
                },
            ),
        ),
    },
}


def _manifests() -> dict[str, dict]:
    documents = list(yaml.safe_load_all((DOCKER / "rayjob.yaml").read_text()))
    return {d["kind"]: d for d in documents if d}


def test_rayjob_manifest_matches_kuberays_rayjob_fields():
    job = _manifests()["RayJob"]
    jsonschema.validate(job, RAYJOB_SCHEMA)
    import ray

    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert job["spec"]["entrypoint"].startswith("python -m tune.search ")


@pytest.mark.parametrize(
    ("path", "wrong"),
    [
        (("spec", "rayClusterSpec"), {"enableInTreeAutoScaling": True}),  # misspelt
        (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams"), {"num-cpus": 0}),
        (("spec", "rayClusterSpec", "authOptions"), {"mode": "password"}),
    ],
)
def test_rayjob_schema_refuses_what_kuberay_would_drop_or_reject(path, wrong):
    job = _manifests()["RayJob"]
    target = job
    for key in path:
        target = target[key]
    target.update(wrong)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, RAYJOB_SCHEMA)


def test_rayjob_submitter_can_reach_the_dashboard_and_needs_the_token():
    cluster = _manifests()["RayJob"]["spec"]["rayClusterSpec"]
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    # The submitter pod reaches the Jobs API through the head's service, never on loopback.
    assert head_params.get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    assert cluster["authOptions"]["mode"] == "token"


def test_rayjob_autoscales_and_asks_for_all_its_gpus_at_once():
    job = _manifests()["RayJob"]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] > 0
    container = gpu["template"]["spec"]["containers"][0]
    gpus_per_node = int(container["resources"]["limits"]["nvidia.com/gpu"])
    entrypoint = job["spec"]["entrypoint"]
    per_trial = float(_flag(entrypoint, "--gpus-per-trial"))
    # KubeRay's autoscaler publishes no maximum: the entrypoint states it, and it must be
    # what maxReplicas GPU nodes run, or the autoscaler never reaches maxReplicas.
    expected = gpu["maxReplicas"] * round(gpus_per_node / per_trial)
    assert int(_flag(entrypoint, "--max-concurrent-trials")) == expected


def test_rayjob_pods_get_storage_credentials_from_a_service_account():
    manifests = _manifests()
    account = manifests["ServiceAccount"]
    assert any("role" in k or "service-account" in k for k in account["metadata"]["annotations"])
    cluster = manifests["RayJob"]["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
        assert (
            template["spec"]["containers"][0]["image"]
            == templates[0]["spec"]["containers"][0]["image"]
        )
    assert "--storage-path s3://" in manifests["RayJob"]["spec"]["entrypoint"]


# --- how many trials an autoscaler is asked for ---------------------------------------------


def _settings(gpus: float = 0.5, cpus: float = 1, num_samples: int = 64) -> SearchSettings:
    fields = dict.fromkeys(SearchSettings.__dataclass_fields__)
    fields.update(
        gpus_per_trial=gpus, cpus_per_trial=cpus, num_samples=num_samples, time_budget_s=None
    )
    return SearchSettings(**fields)


HEAD_ONLY = [{"Resources": {"CPU": 0.0}}]  # an autoscaling cluster before its first worker


def test_concurrency_follows_the_launchers_declared_maximum(tmp_path):
    # The launcher config as the head holds it (ray up writes it as JSON).
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(json.dumps(_launcher_config()))
    declared = launcher_node_types(bootstrap)
    assert sorted(declared, key=lambda d: d[1]) == [
        ({"CPU": 0.0}, 1),
        ({"CPU": 4.0, "GPU": 1.0}, 8),
    ]
    # 8 workers x 2 half-GPU trials, though no worker is up yet.
    assert trial_concurrency(_settings(0.5), HEAD_ONLY, None, declared) == 16
    assert trial_concurrency(_settings(1), HEAD_ONLY, None, declared) == 8
    assert trial_concurrency(_settings(0.5, num_samples=10), HEAD_ONLY, None, declared) == 10
    unlimited = _settings(0.5, num_samples=UNLIMITED_SAMPLES)
    assert trial_concurrency(unlimited, HEAD_ONLY, None, declared) == 16


def test_launcher_config_absent_or_unreadable_declares_nothing(tmp_path, caplog):
    assert launcher_node_types(tmp_path / "missing.yaml") is None
    broken = tmp_path / "broken.yaml"
    broken.write_text("available_node_types: [")
    with caplog.at_level(logging.WARNING):
        assert launcher_node_types(broken) is None
    assert str(broken) in caplog.text


def test_concurrency_flag_wins_and_live_nodes_are_the_fallback():
    live = [{"Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Resources": {"CPU": 8.0, "GPU": 1.0}}]
    declared = [({"CPU": 8.0, "GPU": 1.0}, 8)]
    assert trial_concurrency(_settings(0.5), live, 5, declared) == 5
    assert trial_concurrency(_settings(0.5), live, None, None) == 4


def test_no_node_and_no_declared_maximum_runs_one_trial_and_says_how_to_scale(caplog):
    with caplog.at_level(logging.WARNING):
        assert trial_concurrency(_settings(1), HEAD_ONLY, None, None) == 1
    assert "--max-concurrent-trials" in caplog.text


def test_search_refuses_a_concurrency_below_one():
    from tune.cli import UsageError, build_parser, validate_args

    args = build_parser().parse_args(["--max-concurrent-trials", "0"])
    with pytest.raises(UsageError, match="--max-concurrent-trials is 0"):
        validate_args(args)
