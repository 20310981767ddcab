"""Every YAML in cluster/ and jobs/examples/ parses and holds what its consumer requires.

Required keys come from the consumers' own definitions, cited at each check: Ray's cluster launcher
schema (ray/autoscaler/ray-schema.json, applied by Ray's own validator), Ray's RuntimeEnv and
KubeRay's own CRD schema (tests/kuberay/), applied strictly: a field Kubernetes would silently drop
fails. Nothing here talks to AWS or Kubernetes.
"""

import copy
import functools
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


def test_nightly_raycronjob_runs_the_rayjob_every_night():
    (cron,) = yaml.safe_load_all((KUBERAY / "nightly-score.yaml").read_text())  # no RBAC: the operator creates them
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    # what the nightly RayJob runs is exactly the one-off RayJob's spec
    assert cron["spec"]["jobTemplate"] == load(KUBERAY / "rayjob-score.yaml")["spec"]
    # robfig/cron's ParseStandard (KubeRay's parser): an optional CRON_TZ= prefix, then five fields
    zone, minute, hour, *days = cron["spec"]["schedule"].split()
    assert (zone, minute, hour, days) == ("CRON_TZ=UTC", "0", "1", ["*", "*", "*"])
    # the operator runs RayCronJobs only with their feature gate on, as the README installs it
    gates = {gate["name"]: gate["enabled"] for gate in load(KUBERAY / "operator-values.yaml")["featureGates"]}
    assert gates["RayCronJob"] is True
    readme = (ROOT / "README.md").read_text()
    assert "kubectl apply -f cluster/kuberay/nightly-score.yaml" in readme
    assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.6.0 -f " \
           "cluster/kuberay/operator-values.yaml" in readme


KUBERAY_CRD = ROOT / "tests" / "kuberay" / "ray.io_raycronjobs.yaml"
"""KubeRay 1.6.0's RayCronJob CRD (see tests/kuberay/README.md): its jobTemplate is a RayJob's spec."""
OBJECT_META = {"type": "object", "additionalProperties": False, "properties": {
    "name": {"type": "string"}, "generateName": {"type": "string"}, "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
}}
"""The ObjectMeta fields a manifest here may set (the CRD leaves a root's metadata to Kubernetes)."""


def strict(schema: dict) -> dict:
    """A CRD's structural schema as JSON Schema that fails on every field the API server would prune.

    Kubernetes keeps only the fields a CRD's schema names and drops the rest silently (a misspelt
    ``shutdownAfterJobFinish`` would just vanish), so every object gets ``additionalProperties:
    false`` unless it says what its other keys hold (a map) or keeps unknown fields.
    """
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    elif schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def kuberay_schemas() -> dict[str, dict]:
    """Strict JSON Schemas of a RayCronJob and of a RayJob (its jobTemplate's schema), by kind."""
    crd = yaml.safe_load(KUBERAY_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "RayCronJob"
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    cron = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    cron["properties"]["metadata"] = OBJECT_META
    job = {"type": "object", "required": ["apiVersion", "kind", "spec"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": OBJECT_META,
        "spec": cron["properties"]["spec"]["properties"]["jobTemplate"]}}
    return {"RayCronJob": strict(cron), "RayJob": strict(job)}


def kuberay_errors(manifest: dict) -> list[str]:
    """Every way ``manifest`` breaks its kind's schema: unknown fields, types, enums, required fields."""
    import jsonschema

    validator = jsonschema.Draft7Validator(kuberay_schemas()[manifest["kind"]])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def cel_rule_paths(schema: dict, path: tuple = ()) -> list[tuple]:
    """Where the CRD has CEL rules (x-kubernetes-validations), which JSON Schema cannot check."""
    found = [path] if "x-kubernetes-validations" in schema else []
    for name, sub in schema.get("properties", {}).items():
        found += cel_rule_paths(sub, (*path, name))
    return found


@pytest.mark.parametrize("name", ["rayjob-score.yaml", "nightly-score.yaml"])
def test_kuberay_manifests_follow_kuberays_crd_strictly(name):
    manifest = load(KUBERAY / name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] in ("RayJob", "RayCronJob")
    assert kuberay_errors(manifest) == []
    # the CRD's CEL rules guard fields these manifests do not set, so nothing above went unchecked
    crd = yaml.safe_load(KUBERAY_CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = manifest["spec"].get("jobTemplate", manifest["spec"])
    for path in cel_rule_paths(crd["properties"]["spec"]["properties"]["jobTemplate"]):
        node = spec
        for key in path[:-1]:
            node = node.get(key, {})
        assert path[-1] not in node, f"{name} sets {'.'.join(path)}, which KubeRay checks by a CEL rule"


def test_the_strict_check_finds_what_kubernetes_would_drop_or_refuse():
    job = load(KUBERAY / "rayjob-score.yaml")
    misspelt = copy.deepcopy(job)
    misspelt["spec"]["shutdownAfterJobFinish"] = misspelt["spec"].pop("shutdownAfterJobFinishes")
    deep = copy.deepcopy(job)
    deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["gpus"] = 1
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["activeDeadlineSeconds"] = "20h"
    unknown_meta = copy.deepcopy(load(KUBERAY / "nightly-score.yaml"))
    unknown_meta["metadata"]["label"] = {"a": "b"}
    missing = copy.deepcopy(unknown_meta)
    del missing["metadata"]["label"], missing["spec"]["schedule"]
    assert kuberay_errors(misspelt) == ["spec: Additional properties are not allowed ('shutdownAfterJobFinish' was "
                                        "unexpected)"]
    (error,) = kuberay_errors(deep)
    assert error.startswith("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0: Additional") and \
        "'gpus' was unexpected" in error
    assert kuberay_errors(wrong_type) == ["spec.activeDeadlineSeconds: '20h' is not of type 'integer'"]
    assert len(kuberay_errors(unknown_meta)) == 1 and "'label' was unexpected" in kuberay_errors(unknown_meta)[0]
    assert kuberay_errors(missing) == ["spec: 'schedule' is a required property"]


def test_every_image_runs_the_same_ray():
    versions = {
        "aws.yaml": re.search(r"rayproject/ray:([\d.]+)-", load(CLUSTER / "aws.yaml")["docker"]["image"]).group(1),
        "Dockerfile": re.search(r"^FROM rayproject/ray:([\d.]+)-", (CLUSTER / "Dockerfile").read_text(),
                                re.MULTILINE).group(1),
        "rayjob-score.yaml": load(KUBERAY / "rayjob-score.yaml")["spec"]["rayClusterSpec"]["rayVersion"],
    }
    assert len(set(versions.values())) == 1, versions
