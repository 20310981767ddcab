"""Every YAML in cluster/ and jobs/examples/ parses and holds what its consumer requires.

Required keys come from the consumers' own definitions, cited at each check: Ray's cluster launcher
schema (ray/autoscaler/ray-schema.json, applied by Ray's own validator), Ray's RuntimeEnv, KubeRay's
v1 API types (ray-operator/apis/ray/v1/raycluster_types.go, rayjob_types.go) and the Kubernetes
batch/v1 and rbac/v1 APIs. Nothing here talks to AWS or Kubernetes.
"""

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

from dualcam.jobspec import load_spec

from conftest import ROOT

CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def documents(path: Path) -> dict[str, dict]:
    """The objects of a multi-document manifest, by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}


def test_every_yaml_parses():
    paths = sorted([*CLUSTER.rglob("*.yaml"), *(ROOT / "jobs" / "examples").glob("*.yaml")])
    assert len(paths) >= 8
    for path in paths:
        assert all(isinstance(doc, dict) for doc in yaml.safe_load_all(path.read_text())), path


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_are_valid_for_their_entrypoint(path):
    spec = load_spec(str(path))  # the job's own check: a known job, its required options, no unknown ones
    assert (ROOT / spec.entrypoint).is_file()


def test_cluster_specs_point_at_s3():
    for name in ("score.yaml", "train.yaml", "drift.yaml"):
        options = load_spec(str(ROOT / "jobs" / "examples" / name)).options
        keys = ("c1", "c2", "old", "new", "input", "output", "data", "c1_data", "c2_data")
        uris = [v for k, v in options.items() if k in keys and isinstance(v, str) and "/" in v]
        assert uris and all(u.startswith("s3://") for u in uris), name


def test_no_credentials_in_cluster_or_job_files():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|aws_session_token",
                         re.IGNORECASE)
    for path in [*CLUSTER.rglob("*"), *(ROOT / "jobs").rglob("*")]:
        if path.is_file():
            assert not pattern.search(path.read_text()), path


def test_runtime_env_is_valid_and_installs_pyprojects_dependencies():
    from ray.runtime_env import RuntimeEnv

    env = load(CLUSTER / "runtime_env.yaml")
    assert set(env) <= RuntimeEnv.known_fields  # unknown fields would be taken for plugins and ignored
    RuntimeEnv(**env)  # Ray's validation of pip, working_dir, excludes
    assert env["working_dir"] == "."
    assert {".venv/", ".demo/", ".git"} <= set(env["excludes"])
    # pyproject.toml's dependencies as installed (make refreshes .venv when pyproject.toml changes),
    # less Ray: the cluster's own Ray runs the job, and the runtime env must not install another
    dependencies = [d for d in importlib.metadata.requires("dualcam") if "extra ==" not in d]
    assert env["pip"] == [d for d in dependencies if not re.match(r"ray\b", d)]


def test_aws_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER / "aws.yaml")
    validate_config(prepare_config(config))  # what `ray up` checks: ray-schema.json after Ray's AWS defaults
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    (gpu_name, gpu), = ((name, t) for name, t in types.items() if name != config["head_node_type"])
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    node = gpu["node_config"]
    assert re.match(r"[gp]\d", node["InstanceType"]), "the worker type must have NVIDIA GPUs"
    assert node["InstanceMarketOptions"]["MarketType"] == "spot"
    assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", node["IamInstanceProfile"]["Arn"])
    assert all(t["node_config"]["ImageId"].startswith("ami-") for t in types.values())
    assert config["docker"]["image"].endswith("-gpu")
    mount, source = next(iter(config["file_mounts"].items()))
    assert source == "." and any(mount in command and "pip install" in command for command in config["setup_commands"])


def test_rayjob_runs_the_score_job_on_gpu_workers():
    job = load(KUBERAY / "rayjob-score.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"].get("name") or job["metadata"].get("generateName")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    # raycluster_types.go: headGroupSpec needs rayStartParams and template; each worker group
    # groupName, rayStartParams and template (min/maxReplicas default to 0 and maxInt32)
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_pod = head["template"]["spec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] and isinstance(group["rayStartParams"], dict)
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker_pod = group["template"]["spec"]
    (worker,) = worker_pod["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # IRSA: head (the job driver) and workers run as the annotated ServiceAccount
    account = load(KUBERAY / "serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount" and "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert head_pod["serviceAccountName"] == worker_pod["serviceAccountName"] == account["metadata"]["name"]

    # the entrypoint's script is in the image and its spec in the head's mounted ConfigMap
    python, script, spec_path = spec["entrypoint"].split()
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert python == "python" and script.startswith(workdir + "/")
    assert (ROOT / script[len(workdir) + 1:]).is_file()
    (head_container,) = head_pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in head_container["volumeMounts"]}
    volume = mounts[str(Path(spec_path).parent)]
    assert {v["name"]: v for v in head_pod["volumes"]}[volume]["configMap"]["name"] == "dualcam-score-spec"
    assert f"configmap dualcam-score-spec --from-file={Path(spec_path).name}=" in (ROOT / "README.md").read_text()
    assert head_container["image"] == worker["image"]


def test_nightly_cronjob_creates_the_rayjob():
    objects = documents(KUBERAY / "nightly-score.yaml")
    cron = objects["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")  # batch/v1 Jobs allow only these
    (container,) = pod["containers"]
    assert container["command"][:3] == ["kubectl", "create", "-f"]
    manifest = Path(container["command"][3])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_map = {v["name"]: v for v in pod["volumes"]}[mounts[str(manifest.parent)]]["configMap"]["name"]
    assert (KUBERAY / manifest.name).is_file()
    assert f"configmap {config_map} --from-file=cluster/kuberay/{manifest.name}" in (ROOT / "README.md").read_text()
    # its ServiceAccount may create RayJobs
    account = pod["serviceAccountName"]
    assert objects["ServiceAccount"]["metadata"]["name"] == account
    binding, role = objects["RoleBinding"], objects["Role"]
    assert {"kind": "ServiceAccount", "name": account} in binding["subjects"]
    role_name = role["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name}
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
               for r in role["rules"])


def test_every_image_runs_the_same_ray():
    versions = {
        "aws.yaml": re.search(r"rayproject/ray:([\d.]+)-", load(CLUSTER / "aws.yaml")["docker"]["image"]).group(1),
        "Dockerfile": re.search(r"^FROM rayproject/ray:([\d.]+)-", (CLUSTER / "Dockerfile").read_text(),
                                re.MULTILINE).group(1),
        "rayjob-score.yaml": load(KUBERAY / "rayjob-score.yaml")["spec"]["rayClusterSpec"]["rayVersion"],
    }
    assert len(set(versions.values())) == 1, versions
