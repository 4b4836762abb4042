"""deploy/kubernetes: each overlay renders with ``kubectl kustomize`` (no cluster needed)
and every object validates, strictly, against the Kubernetes schemas; and what the
gateway needs of its manifests holds: probes on its health endpoints, a grace period
that covers the drain, a read-only root, the alias ConfigMap mounted as a directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

KUBERNETES = Path(__file__).parents[1] / "deploy" / "kubernetes"
OVERLAYS = ["embedded", "redis"]


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl renders the manifests (kubectl kustomize)"
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_schemas(overlay: str) -> None:
    version = kubernetes_validate.utils.latest_version()
    for doc in render(overlay):
        kubernetes_validate.validate(doc, version, strict=True)


def _gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "runestone"
    ]
    return deployment


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_is_deployed_as_it_needs(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    } <= kinds
    pod = _gateway(docs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    drain = float(env["RUNESTONE_DRAIN_DELAY"]) + float(env["RUNESTONE_GRACEFUL_TIMEOUT"]) + 5
    assert pod["terminationGracePeriodSeconds"] >= drain
    assert env["RUNESTONE_HOST"] == "0.0.0.0"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts["aliases"]  # a directory: ConfigMap edits reach the pod
    assert env["RUNESTONE_ALIASES_PATH"].startswith(mounts["aliases"]["mountPath"] + "/")
    assert env["RUNESTONE_STATE_PATH"].startswith(mounts["state"]["mountPath"] + "/")
    assert container["envFrom"] == [{"secretRef": {"name": "runestone-secrets"}}]
    if overlay == "redis":
        assert env["RUNESTONE_REDIS_URL"].startswith("redis://")
        assert _gateway(docs)["spec"]["replicas"] > 1
    else:
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "runestone-state"
        assert _gateway(docs)["spec"]["strategy"]["type"] == "Recreate"


def test_the_alias_configmap_is_a_valid_alias_file(tmp_path: Path) -> None:
    from runestone.aliases import load_alias_file

    (configmap,) = [d for d in render("embedded") if d["kind"] == "ConfigMap"]
    path = tmp_path / "aliases.yaml"
    path.write_text(configmap["data"]["aliases.yaml"])
    assert "fast" in load_alias_file(path).aliases
