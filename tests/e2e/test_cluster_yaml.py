"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own defaults merge + JSON-schema check,
as `ray up` does before touching the cloud), with the node types, image and services irr-ray needs,
and every shell command it runs is syntactically valid bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validation(cluster: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))  # raises on an unknown key or a wrong type


def test_cluster_yaml_has_head_and_autoscaling_a100_workers(cluster: dict) -> None:
    assert cluster["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    (worker_name,) = [n for n in types if n != cluster["head_node_type"]]
    worker = types[worker_name]
    assert worker["resources"]["GPU"] == 1
    assert worker["min_workers"] == 0 < worker["max_workers"] <= cluster["max_workers"]
    assert worker["node_config"]["machineType"] == "a2-highgpu-1g"  # 1 x A100


def test_cluster_yaml_installs_package_and_runs_mlflow_on_head(cluster: dict) -> None:
    assert any('"irr-ray[gpu] @ file:///home/ray/irr-ray"' in c for c in cluster["setup_commands"])
    assert cluster["file_mounts"]["/home/ray/irr-ray"] == "."
    head = " ".join(cluster["head_start_ray_commands"])
    assert "mlflow server --backend-store-uri sqlite:////home/ray/mlflow.db" in head
    assert "--dashboard-host=127.0.0.1" in head
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert 'MLFLOW_TRACKING_URI="http://$RAY_HEAD_IP:5000"' in workers


def test_cluster_yaml_commands_are_valid_bash(cluster: dict) -> None:
    for key in COMMAND_KEYS:
        for cmd in cluster.get(key) or []:
            res = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert res.returncode == 0, f"{key}: {cmd!r}: {res.stderr}"
