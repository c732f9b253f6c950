"""ray_cluster.yaml is a valid Ray cluster-launcher config: checked against the schema inside the ray package."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_ray_cluster_yaml_validates_against_rays_schema():
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, _schema())
    # what signfeat needs of it: a GPU worker type that autoscales, setup that installs signfeat with the pins
    assert config["head_node_type"] in config["available_node_types"]
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers and all(t["max_workers"] > t["min_workers"] for t in workers)
    setup = "\n".join(config["setup_commands"])
    assert "constraints.txt" in setup and "pip install" in setup and "torch==2.14.1" in setup
    assert any(str(v) == "." for v in config["file_mounts"].values())


def test_the_schema_check_can_fail():
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config["available_node_types"]["head"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())
