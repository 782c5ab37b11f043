"""deploy/kubernetes: every manifest is valid against the Kubernetes schemas, carries what running
the appliance there needs (gRPC probes, grace above the daemon's, both Services, a disruption
budget, GPU requests in the GPU variant, read-only models and secrets, the systemd unit's
hardening), and passes checkov's scan with every skipped check explained in the manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import validate

from appliance.server.config import Config

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are for (the preStop sleep action is on by default from 1.30)
# and the newest schema kubernetes-validate has.
VERSIONS = ("1.30.0", "1.37.0")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict]:
    """(file relative to deploy/kubernetes, kind/name) -> resource, for every manifest."""
    found = {}
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in documents(path):
            found[(str(path.relative_to(MANIFESTS)), f"{doc['kind']}/{doc['metadata']['name']}")] = doc
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    found = resources()
    assert len(found) >= 10
    for (path, name), doc in found.items():
        validate(doc, version, strict=True)  # raises naming the field that is wrong


def test_the_validator_catches_a_misspelt_field():
    deployment = resources()[("deployment.yaml", "Deployment/appliance")]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    with pytest.raises(Exception, match="grcp"):
        validate(broken, VERSIONS[-1], strict=True)


def _appliance_config(configmap: dict) -> Config:
    data = tomllib.loads(configmap["data"]["appliance.toml"])
    data.pop("tls")  # its files exist on the pod only; the rest is checked as the daemon would
    return Config.model_validate(data)


@pytest.mark.parametrize("variant", ["", "gpu/"])
def test_a_deployment_has_what_the_appliance_needs_there(variant):
    found = resources()
    deployment = found[(f"{variant}deployment.yaml", "Deployment/appliance")]
    configmap = next(doc for (path, _), doc in found.items() if path == f"{variant}configmap.yaml")
    config = _appliance_config(configmap)
    pod = deployment["spec"]["template"]
    spec, (container,) = pod["spec"], pod["spec"]["containers"]

    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == config.server.metrics_listen.rpartition(":")[2]
    # Native gRPC probes on grpc.health.v1; the start-up probe outlasts a slow model load.
    port = int(config.server.listen.rpartition(":")[2])
    assert {container[p]["grpc"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {port}
    assert container["readinessProbe"]["grpc"]["service"] == "appliance.v1.Inference"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    # Kubernetes waits for the preStop sleep and the daemon's drain before it kills the pod.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + config.server.grace_period_s

    # The systemd unit's hardening: non-root, read-only root, no capabilities, no escalation.
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0
    assert spec["automountServiceAccountToken"] is False
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] and not hardening["allowPrivilegeEscalation"]
    assert hardening["capabilities"]["drop"] == ["ALL"] and "add" not in hardening["capabilities"]

    # Models from a read-only volume; keys, TLS and the audit key from Secrets, read-only.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts[str(config.server.models)]["readOnly"]
    assert volumes[mounts[str(config.server.models)]["name"]]["persistentVolumeClaim"]["readOnly"]
    for path in (config.auth.keys_db, config.redaction.audit_key_file, Path("/etc/appliance/tls/tls.crt")):
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] and "secret" in volumes[mount["name"]]
    # What the daemon writes goes to the pod's own volumes, not the read-only root.
    assert "emptyDir" in volumes[mounts[str(config.server.usage_db.parent)]["name"]]

    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == 1 and config.runtime.providers[0] == "cuda") if variant else gpus is None


def test_services_budget_and_policy():
    found = resources()
    headless = found[("services.yaml", "Service/appliance-headless")]["spec"]
    cluster_ip = found[("services.yaml", "Service/appliance")]["spec"]
    assert headless["clusterIP"] == "None" and cluster_ip["type"] == "ClusterIP"
    for spec in (headless, cluster_ip):
        assert spec["selector"] == {"app.kubernetes.io/name": "appliance"}
    assert found[("policy.yaml", "PodDisruptionBudget/appliance")]["spec"]["maxUnavailable"] == 1
    assert found[("policy.yaml", "PersistentVolumeClaim/appliance-models")]["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_checkov_finds_no_failed_check_and_every_skip_says_why():
    checkov = shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov is not installed (too heavy for the dev extra; .ci/run installs it in its own venv)")
    done = subprocess.run([checkov, "--directory", str(MANIFESTS), "--framework", "kubernetes", "--output", "json",
                           "--compact"], capture_output=True, text=True, timeout=300)
    reports = json.loads(done.stdout)
    report = reports[0] if isinstance(reports, list) else reports
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for c in results["failed_checks"]]
    assert failed == [], "\n".join(failed)
    unexplained = [c["check_id"] for c in results["skipped_checks"] if not (c.get("check_result") or {}).get(
        "suppress_comment", "").strip()]
    assert unexplained == []
    assert report["summary"]["parsing_errors"] == 0 and len(results["passed_checks"]) > 100
    print(f"\ncheckov: {len(results['passed_checks'])} passed, {len(results['skipped_checks'])} skipped with a reason: "
          + ", ".join(sorted({c["check_id"] for c in results["skipped_checks"]})))
