"""The cluster files through the ecosystem's own scanners (``make lint-cluster``); exits non-zero on any finding.

    .venv-cluster-lint/bin/python cluster/lint.py               # the repository's cluster/
    .venv-cluster-lint/bin/python cluster/lint.py --self-check  # a copy with one flaw per scan: each must fail

- hadolint and checkov read ``Dockerfile``;
- ``kubernetes-validate`` (Kubernetes' own schemas, strictly) and checkov read the core Kubernetes objects of
  ``kuberay/`` and, since neither reads KubeRay's custom resources, every pod template of its RayJobs and
  RayCronJobs written out as a Pod (tests/test_cluster_configs.py checks the RayJobs themselves against
  KubeRay's CRD schema);
- checkov reads the IAM policies of ``iam/`` as the managed policies of a CloudFormation template (it reads
  IAM only there).

Every check a scanner skips is in ``scanner-skips.yaml``, with its reason (an entry with ``pods: head`` is
skipped for head pods only), and so is every kind no scanner reads (``unscanned-kinds``). Offline: checkov
runs with ``--skip-download`` and ``BC_SKIP_MAPPING=TRUE``. Runs in a venv of its own that holds only the
scanners (pyproject.toml's ``cluster-lint`` extra): checkov pins older boto3 and packaging than dualcam's
venv has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CRD_KINDS = ("RayJob", "RayCronJob")
"""KubeRay's kinds: their pod templates are scanned as Pods."""


def skips(root: Path) -> dict[str, list[dict]]:
    """scanner-skips.yaml: for each scan, the checks it skips, each with its reason."""
    listed = yaml.safe_load((root / "scanner-skips.yaml").read_text())
    for scan, entries in listed.items():
        for entry in entries:
            if not str(entry.get("reason", "")).strip():
                raise SystemExit(f"scanner-skips.yaml: {scan} {entry.get('id')} has no reason")
    return listed


def manifests(root: Path) -> Iterator[tuple[Path, dict]]:
    for path in sorted((root / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                yield path, doc


def pod_templates(manifest: dict) -> Iterator[tuple[str, dict]]:
    """(group, template) of a RayJob's or RayCronJob's head and worker groups."""
    cluster = manifest["spec"].get("jobTemplate", manifest["spec"])["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def as_pod(path: Path, manifest: dict, group: str, template: dict, head_skips: list[dict]) -> dict:
    """A pod template as the Pod it becomes, named after its file and group, in its manifest's namespace;
    a head pod carries the checkov skips meant for head pods only (checkov reads them from annotations)."""
    notes = {f"checkov.io/skip{i}": f"{s['id']}=see cluster/scanner-skips.yaml" for i, s in enumerate(head_skips, 1)}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{path.stem}-{group}", "namespace": manifest["metadata"]["namespace"],
                         "labels": template.get("metadata", {}).get("labels", {}),
                         **({"annotations": notes} if group == "head" and notes else {})},
            "spec": template["spec"]}


def write_kubernetes_objects(root: Path, folder: Path, head_skips: list[dict], unscanned: set[str]) -> list[Path]:
    """The core objects of kuberay/ and the Pods of its RayJobs and RayCronJobs, one file each; not the kinds
    in ``unscanned``."""
    written = []
    for path, doc in manifests(root):
        if doc["kind"] in unscanned:
            continue
        objects = [as_pod(path, doc, group, template, head_skips) for group, template in pod_templates(doc)] \
            if doc["kind"] in CRD_KINDS else [doc]
        for obj in objects:
            written.append(folder / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml")
            written[-1].write_text(yaml.safe_dump(obj, sort_keys=False))
    return written


def write_iam_template(root: Path, folder: Path) -> Path:
    """iam/*.json as the managed policies of one CloudFormation template, for checkov."""
    resources = {f"Policy{i}": {"Type": "AWS::IAM::ManagedPolicy", "Properties": {
        "Description": path.name, "PolicyDocument": json.loads(path.read_text())}}
        for i, path in enumerate(sorted((root / "iam").glob("*.json")))}
    template = folder / "iam.json"
    template.write_text(json.dumps({"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}, indent=2))
    return template


def checkov(paths: list[Path], framework: str, skipped: list[dict]) -> list[str]:
    ids = ",".join(entry["id"] for entry in skipped)
    return [str(BIN / "checkov"), "--skip-download", "--quiet", "--compact", "--framework", framework,
            *(["--skip-check", ids] if ids else []), *(arg for path in paths for arg in ("-f", str(path)))]


def scans(root: Path, folder: Path) -> dict[str, list[str]]:
    """Each scan's command line, on the cluster files under ``root`` (objects written to ``folder``)."""
    skipped = skips(root)
    pods = skipped.get("checkov-kubernetes", [])
    unscanned = {entry["id"] for entry in skipped.get("unscanned-kinds", [])}
    objects = write_kubernetes_objects(root, folder, [s for s in pods if s.get("pods") == "head"], unscanned)
    ignored = [arg for entry in skipped.get("hadolint", []) for arg in ("--ignore", entry["id"])]
    return {
        "hadolint": [str(BIN / "hadolint"), *ignored, str(root / "Dockerfile")],
        "checkov: Dockerfile": checkov([root / "Dockerfile"], "dockerfile", skipped.get("checkov-dockerfile", [])),
        "kubernetes-validate": [str(BIN / "kubernetes-validate"), "--strict", "--quiet", *map(str, objects)],
        "checkov: Kubernetes objects and pods": checkov(objects, "kubernetes", [s for s in pods if "pods" not in s]),
        "checkov: IAM policies": checkov([write_iam_template(root, folder)], "cloudformation",
                                         skipped.get("checkov-iam", [])),
    }


def passed(root: Path) -> dict[str, bool]:
    """Each scan on the cluster files under ``root``: passed or not (its findings printed)."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="dualcam-lint-") as temp:
        for name, command in scans(root, Path(temp)).items():
            print(f"--- {name}: {' '.join(command)}", flush=True)
            results[name] = subprocess.run(command, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"}).returncode == 0
            print(f"--- {name}: {'passed' if results[name] else 'FAILED'}", flush=True)
    return results


def flawed_copy(folder: Path) -> Path:
    """A copy of cluster/ with one flaw each scan must find: a Dockerfile without HEALTHCHECK (checkov) that
    ends as root (hadolint), a privileged worker pod (checkov), a misspelt field in a core object
    (kubernetes-validate, strict) and a policy that may do anything on S3 (checkov)."""
    root = folder / "cluster"
    shutil.copytree(CLUSTER, root)
    dockerfile = root / "Dockerfile"
    lines = dockerfile.read_text().splitlines()
    dockerfile.write_text("\n".join(line for line in lines if not line.startswith("HEALTHCHECK")) + "\nUSER root\n")
    job = root / "kuberay" / "rayjob-score.yaml"
    manifest = yaml.safe_load(job.read_text())
    worker = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["securityContext"]["privileged"] = True
    job.write_text(yaml.safe_dump(manifest))
    policy = root / "kuberay" / "networkpolicy.yaml"
    policy.write_text(policy.read_text().replace("policyTypes:", "policyType:"))
    (root / "iam" / "anything.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    return root


def main(argv: list[str]) -> int:
    if argv == ["--self-check"]:
        print("cluster lint self-check: a copy of cluster/ with a flaw for each scan; each scan below must FAIL")
        with tempfile.TemporaryDirectory(prefix="dualcam-flawed-") as temp:
            results = passed(flawed_copy(Path(temp)))
        missed = [name for name, ok in results.items() if ok]
        print(f"cluster lint self-check: {len(results) - len(missed)} of {len(results)} scans found their flaw"
              + (f"; missed by: {', '.join(missed)}" if missed else ""), flush=True)
        return 1 if missed else 0
    results = passed(CLUSTER)
    print(f"cluster lint: {sum(results.values())} of {len(results)} scans passed", flush=True)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
