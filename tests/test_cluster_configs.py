"""Every YAML in cluster/ and jobs/examples/ parses and holds what its consumer requires.

Required keys come from the consumers' own definitions, cited at each check: Ray's cluster launcher
schema (ray/autoscaler/ray-schema.json, applied by Ray's own validator), Ray's RuntimeEnv and
KubeRay's own CRD schema (tests/kuberay/), applied strictly: a field Kubernetes would silently drop
fails. Nothing here talks to AWS or Kubernetes.
"""

import copy
import functools
import importlib.metadata
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from dualcam.jobspec import load_spec
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import ROOT, write_untrained_experts

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
        keys = ("expert1", "expert2", "old_expert", "new_expert", "input", "output", "data", "class1_data",
                "class2_data")
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
    assert gpu["min_workers"] == 0, "no GPU node kept up between runs (docs/cluster.md: cost)"
    assert 0 < gpu["max_workers"] <= config["max_workers"] and config["idle_timeout_minutes"] <= 10
    node = gpu["node_config"]
    assert re.match(r"[gp]\d", node["InstanceType"]), "the worker type must have NVIDIA GPUs"
    assert node["InstanceMarketOptions"]["MarketType"] == "spot"
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in types.items()}
    assert all(re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn) for arn in profiles.values())
    assert profiles[config["head_node_type"]].endswith("/dualcam-ray-head")  # not ray-autoscaler-v1's EC2 and S3
    assert profiles[gpu_name].endswith("/dualcam-ray-worker")
    for name, t in types.items():  # IMDSv2 only, one hop: the containers share the host's network
        assert t["node_config"]["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}, name
    assert all(t["node_config"]["ImageId"].startswith("ami-") for t in types.values())
    assert config["docker"]["image"].endswith("-gpu")
    mount, source = next(iter(config["file_mounts"].items()))
    assert source == "." and any(mount in command and "pip install" in command and "constraints.txt" in command
                                 for command in config["setup_commands"])


def start_command(config: dict, key: str) -> list[str]:
    """The ``ray start`` command line of a launcher config's head or worker start commands, as the shell splits
    it, after checking that they turn token auth on with the token cluster/ray_token.py reads in the region."""
    *_, command = config[key]
    assert command.startswith('RAY_AUTH_TOKEN="$(python /home/ray/dualcam/cluster/ray_token.py '
                              f'{config["provider"]["region"]})" && export RAY_AUTH_MODE=token RAY_AUTH_TOKEN && ')
    return shlex.split(command.rsplit(" && ", 1)[1])


def test_aws_nodes_start_ray_with_token_auth_and_the_dashboard_on_loopback():
    config = load(CLUSTER / "aws.yaml")
    head, worker = start_command(config, "head_start_ray_commands"), start_command(config, "worker_start_ray_commands")
    assert head[:3] == ["ray", "start", "--head"] and "--dashboard-host=127.0.0.1" in head
    assert worker[:3] == ["ray", "start", "--address=$RAY_HEAD_IP:6379"]
    # Ray's and dualcam's metrics on a port Prometheus can be told (docs/cluster.md), as on KubeRay; else random
    assert "--metrics-export-port=8080" in head and "--metrics-export-port=8080" in worker
    # Ray's own defaults otherwise (ray/autoscaler/aws/defaults.yaml): the launcher's bootstrap still works
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head


def test_ray_token_is_read_from_the_secret_store(s3_endpoint):
    import boto3

    token = secrets.token_hex(32)
    client = boto3.client("secretsmanager", region_name="us-east-1")
    client.create_secret(Name="dualcam/ray-auth-token", SecretString=token)
    try:
        script = [sys.executable, str(CLUSTER / "ray_token.py")]
        result = subprocess.run([*script, "us-east-1"], capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout) == (0, token)
        missing = subprocess.run([*script, "eu-west-1"], capture_output=True, text=True, timeout=120)
        assert missing.returncode != 0 and missing.stdout == ""  # nothing for RAY_AUTH_TOKEN: the start stops there
    finally:
        client.delete_secret(SecretId="dualcam/ray-auth-token", ForceDeleteWithoutRecovery=True)


# --- KubeRay ---------------------------------------------------------------------------------------

RAYJOBS = {  # file: (its script, the ConfigMap holding its spec, its ServiceAccount)
    "rayjob-score.yaml": ("score", "dualcam-score-spec", "dualcam-scoring"),
    "rayjob-drift.yaml": ("drift", "dualcam-drift-spec", "dualcam-scoring"),
    "rayjob-train.yaml": ("train", "dualcam-train-spec", "dualcam-training"),
}
SPEC_FILES = {"score": "score.yaml", "drift": "drift.yaml", "train": "train.yaml"}
NAMESPACE = "dualcam"
DOCS = (ROOT / "docs" / "cluster.md").read_text()


def service_accounts() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((KUBERAY / "serviceaccounts.yaml").read_text())}


def templates(job_spec: dict) -> list[dict]:
    """The pod templates of a RayJob's spec: the head's, then each worker group's."""
    cluster = job_spec["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_runs_its_job_on_gpu_workers(name):
    script, configmap, account = RAYJOBS[name]
    job = load(KUBERAY / name)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["generateName"] and job["metadata"]["namespace"] == NAMESPACE
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "HTTPMode"
    cluster = spec["rayClusterSpec"]
    # raycluster_types.go: headGroupSpec needs rayStartParams and template; each worker group
    # groupName, rayStartParams and template (min/maxReplicas default to 0 and maxInt32)
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_pod = head["template"]["spec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] and isinstance(group["rayStartParams"], dict)
    assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]  # no GPU kept waiting
    worker_pod = group["template"]["spec"]
    (worker,) = worker_pod["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # IRSA: head (the job driver) and workers run as the job's ServiceAccount, annotated with its own role
    assert head_pod["serviceAccountName"] == worker_pod["serviceAccountName"] == account
    annotations = service_accounts()[account]["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].endswith(f":role/{account}")

    # the entrypoint's script is in the image and its spec in the head's mounted ConfigMap
    python, script_path, spec_path = spec["entrypoint"].split()
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert python == "python" and script_path == f"{workdir}/jobs/{script}.py"
    assert (ROOT / script_path[len(workdir) + 1:]).is_file()
    (head_container,) = head_pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in head_container["volumeMounts"]}
    volume = mounts[str(Path(spec_path).parent)]
    assert {v["name"]: v for v in head_pod["volumes"]}[volume]["configMap"]["name"] == configmap
    example = f"jobs/examples/{SPEC_FILES[script]}"
    assert Path(spec_path).name == SPEC_FILES[script] and load_spec(str(ROOT / example)).job == script
    assert f"kubectl -n {NAMESPACE} create configmap {configmap} --from-file={Path(spec_path).name}={example}" in DOCS
    assert head_container["image"] == worker["image"]


def test_the_rayjobs_differ_only_in_their_job_and_identity():
    """train and drift are the score RayJob with its script, spec, ServiceAccount (and, for training, its time
    limit) changed: a change to one Ray cluster's shape or security is made to all, or this fails."""
    score = load(KUBERAY / "rayjob-score.yaml")
    for name, (script, configmap, account) in RAYJOBS.items():
        job = load(KUBERAY / name)
        text = yaml.safe_dump(score).replace("jobs/score.py", f"jobs/{script}.py") \
            .replace("dualcam-score-spec", configmap) \
            .replace("score.yaml", SPEC_FILES[script]).replace("dualcam-scoring", account) \
            .replace("dualcam-score", job["metadata"]["labels"]["app.kubernetes.io/name"])
        expected = yaml.safe_load(text)
        expected["spec"]["activeDeadlineSeconds"] = job["spec"]["activeDeadlineSeconds"]
        assert job == expected, name


def test_every_ray_pod_is_authenticated_non_root_and_read_only():
    specs = {name: load(KUBERAY / name)["spec"] for name in RAYJOBS}
    specs["nightly-score.yaml"] = load(KUBERAY / "nightly-score.yaml")["spec"]["jobTemplate"]
    hardened = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
                "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    for name, spec in specs.items():
        cluster = spec["rayClusterSpec"]
        # KubeRay (common/pod.go) then sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, from a Secret it makes per
        # Ray cluster, on every Ray container, and submits with the token; it needs Ray 2.52 or later
        assert cluster["authOptions"] == {"mode": "token"}, name
        assert tuple(map(int, cluster["rayVersion"].split("."))) >= (2, 52)
        assert cluster["autoscalerOptions"]["securityContext"] == hardened, name  # the autoscaler's container
        for i, template in enumerate(templates(spec)):
            assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dualcam"  # networkpolicy.yaml
            pod = template["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            (container,) = pod["containers"]
            assert container["securityContext"] == hardened, name  # KubeRay copies it to its init container
            # what Ray writes, each on an emptyDir: its session folder and logs, its object store, torch's cache
            volumes = {v["name"]: v for v in pod["volumes"]}
            writable = {m["mountPath"]: volumes[m["name"]].get("emptyDir") for m in container["volumeMounts"]
                        if "configMap" not in volumes[m["name"]]}
            assert set(writable) == {"/tmp", "/dev/shm", "/home/ray/.cache"}, name
            assert writable["/dev/shm"]["medium"] == "Memory"
            # only the head's autoscaler talks to Kubernetes
            assert i == 0 or pod["automountServiceAccountToken"] is False, name


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (namespaces)")
def test_a_score_job_runs_where_only_the_pods_writable_paths_can_be_written():
    """Ray and the score job on a read-only root filesystem with only the score RayJob's emptyDirs writable
    (tests/read_only_root.sh: mount, network and PID namespaces of its own, so nothing outside is touched)."""
    pod = templates(load(KUBERAY / "rayjob-score.yaml")["spec"])[0]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    home = str(Path.home())  # the image's is /home/ray
    writable = [m["mountPath"].replace("/home/ray", home) for m in container["volumeMounts"]
                if "emptyDir" in volumes[m["name"]]]
    hidden = [w for w in writable for needed in (ROOT, Path(sys.executable)) if needed.is_relative_to(w)]
    if hidden:  # an empty tmpfs goes over each writable path: a checkout under one would vanish with it
        pytest.skip(f"this checkout or its Python lies under {hidden[0]}, which the check mounts over; "
                    "run it from a checkout elsewhere")
    data = Path(tempfile.mkdtemp(dir="/var/tmp"))  # not under /tmp: that is an empty tmpfs in there
    try:
        c1, c2 = write_untrained_experts(data, 64)
        write_synthetic_xrays(data / "images", 4, size=96)
        output = Path(writable[0]) / "dualcam-out"
        spec = data / "score.yaml"
        spec.write_text(json.dumps({"job": "score", "expert1": c1, "expert2": c2, "input": str(data / "images"),
                                    "output": str(output), "batch_size": 4, "no_progress": True}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
        env.update({e["name"]: e["value"] for e in container["env"]}, PYTHONPATH=str(ROOT),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
        result = subprocess.run(["unshare", "-m", "-n", "-p", "--fork", "--mount-proc", "sh",
                                 str(ROOT / "tests" / "read_only_root.sh"), str(spec), *writable],
                                env=env, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    printed = result.stdout + result.stderr
    assert f"read-only but for: {' '.join(writable)}" in printed, printed[-3000:]
    assert result.returncode == 0 and "output holds 4 ok, 0 errors" in printed, printed[-5000:]
    assert "Read-only file system" not in printed, printed[-5000:]


def test_networkpolicy_lets_in_only_ray_pods_the_operator_and_prometheus():
    policy = load(KUBERAY / "networkpolicy.yaml")
    assert policy["metadata"]["namespace"] == NAMESPACE and policy["spec"]["policyTypes"] == ["Ingress"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected == {"app.kubernetes.io/part-of": "dualcam"}
    ray_pods, operator, prometheus = policy["spec"]["ingress"]
    assert ray_pods == {"from": [{"podSelector": {"matchLabels": selected}}]}
    (source,) = operator["from"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kuberay-system"}
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]  # the dashboard and job server only
    assert prometheus["ports"] == [{"port": 8080, "protocol": "TCP"}]  # Ray's metrics only
    assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.6.0 --namespace kuberay-system " \
           "--create-namespace -f cluster/kuberay/operator-values.yaml" in DOCS
    monitor = load(KUBERAY / "podmonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"] == selected
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"  # KubeRay's name for Ray's 8080


def test_every_object_is_in_dualcams_namespace():
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc.get("kind") == "Namespace":
                assert doc["metadata"]["name"] == NAMESPACE
                assert doc["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"
            elif path.name != "operator-values.yaml":  # helm values, not an object
                assert doc["metadata"]["namespace"] == NAMESPACE, path.name


@pytest.mark.parametrize("name", RAYJOBS)
def test_a_retried_run_waits_for_the_dead_runs_lease(name):
    assert load(KUBERAY / name)["spec"]["backoffLimit"] >= 1  # a rerun resumes: retrying is safe
    job = load_spec(str(ROOT / "jobs" / "examples" / SPEC_FILES[RAYJOBS[name][0]]))
    if job.job != "train":  # training holds no lease; its retry goes on from Ray Train's checkpoints
        assert job.options["wait_for_lease"] is True, "a retry would exit 2 while the dead driver's lease is live"


def test_nightly_raycronjob_runs_the_rayjob_every_night():
    (cron,) = yaml.safe_load_all((KUBERAY / "nightly-score.yaml").read_text())  # no RBAC: the operator creates them
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    # what the nightly RayJob runs is exactly the one-off RayJob's spec
    assert cron["spec"]["jobTemplate"] == load(KUBERAY / "rayjob-score.yaml")["spec"]
    # robfig/cron's ParseStandard (KubeRay's parser): an optional CRON_TZ= prefix, then five fields
    zone, minute, hour, *days = cron["spec"]["schedule"].split()
    assert (zone, minute, hour, days) == ("CRON_TZ=UTC", "0", "1", ["*", "*", "*"])
    # the operator runs RayCronJobs only with their feature gate on, as docs/cluster.md installs it
    gates = {gate["name"]: gate["enabled"] for gate in load(KUBERAY / "operator-values.yaml")["featureGates"]}
    assert gates["RayCronJob"] is True
    assert "kubectl apply -f cluster/kuberay/nightly-score.yaml" in DOCS


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


@pytest.mark.parametrize("name", [*RAYJOBS, "nightly-score.yaml"])
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
        **{name: load(KUBERAY / name)["spec"]["rayClusterSpec"]["rayVersion"] for name in RAYJOBS},
    }
    assert len(set(versions.values())) == 1, versions


# --- IAM: each role only what its work needs --------------------------------------------------------

IAM = CLUSTER / "iam"
ARCHIVE, DATA, MODELS, RESULTS = (f"arn:aws:s3:::example-{b}" for b in ("archive", "data", "models", "results"))
ACCOUNT = "arn:aws:{service}:us-east-1:123456789012"
GRANTS = {
    # score and drift: list and read the archive and the experts; read, write and delete under the results
    # (resume reads them, the lease and the .inflight files are deleted, _logs/ written)
    "scoring.json": {("s3:ListBucket", b) for b in (ARCHIVE, MODELS, RESULTS)}
    | {("s3:GetObject", f"{b}/*") for b in (ARCHIVE, MODELS, RESULTS)}
    | {(a, f"{RESULTS}/*") for a in ("s3:PutObject", "s3:DeleteObject")},
    # train: read the labelled data; read (warm starts), write and delete experts and Ray Train's checkpoints
    "training.json": {("s3:ListBucket", b) for b in (DATA, MODELS)} | {("s3:GetObject", f"{DATA}/*")}
    | {(a, f"{MODELS}/*") for a in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")},
    # AWS nodes: read Ray's token, nothing else of Secrets Manager
    "ray-token.json": {("secretsmanager:GetSecretValue",
                        ACCOUNT.format(service="secretsmanager") + ":secret:dualcam/ray-auth-token-*")},
}
ROLES = {  # role: its policies; AWS's head and workers (cluster/aws.yaml), KubeRay's ServiceAccounts
    "dualcam-ray-head": ("head.json", "ray-token.json", "scoring.json"),  # the drivers of score and drift run here
    "dualcam-ray-worker": ("scoring.json", "ray-token.json"),
    "dualcam-scoring": ("scoring.json",),
    "dualcam-training": ("training.json",),
}


def grants(name: str) -> set[tuple[str, str]]:
    """(action, resource) pairs a policy allows; every statement an Allow of listed actions on listed resources."""
    pairs = set()
    for statement in json.loads((IAM / name).read_text())["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        actions, resources = statement["Action"], statement["Resource"]
        for action in [actions] if isinstance(actions, str) else actions:
            pairs |= {(action, r) for r in ([resources] if isinstance(resources, str) else resources)}
    return pairs


@pytest.mark.parametrize("name", GRANTS)
def test_each_data_role_may_do_only_its_jobs_work(name):
    assert grants(name) == GRANTS[name]


def test_only_training_writes_experts_and_nothing_may_do_everything():
    for path in IAM.glob("*.json"):
        pairs = grants(path.name)
        assert not any("*" in action for action, _ in pairs), path.name
        writes_models = {a for a, r in pairs if r.startswith(MODELS) and a in ("s3:PutObject", "s3:DeleteObject")}
        assert bool(writes_models) == (path.name == "training.json"), path.name


def test_the_aws_head_launches_and_ends_only_this_clusters_workers():
    statements = {s["Sid"]: s for s in json.loads((IAM / "head.json").read_text())["Statement"]}
    actions = {a for s in statements.values() for a in s["Action"]}
    # the head's actions, pinned: describe, launch, tag and end instances (cache_stopped_nodes: false, so no stop or
    # start), pass the workers their role; nothing else, and no S3 here (the drivers' S3 is scoring.json's)
    assert actions == {"ec2:DescribeInstances", "ec2:DescribeImages", "ec2:DescribeSubnets",
                       "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs", "ec2:DescribeInstanceTypes",
                       "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "iam:PassRole"}
    assert not any(a.startswith("s3:") for a in actions)
    tagged = [s for s in statements.values() if {"ec2:TerminateInstances", "ec2:CreateTags"} & set(s["Action"])]
    assert all(set(s["Condition"]["StringEquals"].values()) == {load(CLUSTER / "aws.yaml")["cluster_name"]}
               for s in tagged)
    (passing,) = (s for s in statements.values() if "iam:PassRole" in s["Action"])
    assert passing["Action"] == ["iam:PassRole"]
    worker_profile = load(CLUSTER / "aws.yaml")["available_node_types"]["gpu"]["node_config"]["IamInstanceProfile"]
    assert passing["Resource"].rsplit("/", 1)[1] == worker_profile["Arn"].rsplit("/", 1)[1] == "dualcam-ray-worker"


@pytest.mark.parametrize("role", ROLES)
def test_docs_give_each_role_its_policies(role):
    for policy in ROLES[role]:
        assert f"aws iam put-role-policy --role-name {role} --policy-name dualcam-{Path(policy).stem} " \
               f"--policy-document file://cluster/iam/{policy}" in DOCS, (role, policy)
    assert {p.name for p in IAM.glob("*.json")} == {p for policies in ROLES.values() for p in policies}
