"""The Kubernetes manifests (deploy/kubernetes), offline: each object against
the Kubernetes API schema (kubernetes-validate's bundled schemas), and the
lab files they carry against bridgelab's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from bridgelab.model.spec import load_lab_text

MANIFESTS = sorted((Path(__file__).resolve().parent.parent / "deploy" / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    return next(o for o in objects() if o["kind"] == kind)


@pytest.mark.parametrize("obj", objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_object_is_valid_kubernetes(obj):
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises, naming the field, when not


def test_every_nodes_lab_file_is_a_valid_lab_with_peers_from_the_headless_service():
    service = by_kind("Service")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    dns = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    labs = {key: load_lab_text(text) for key, text in by_kind("ConfigMap")["data"].items()}
    assert len(labs) >= 2 and all(key.endswith(".yaml") for key in labs)
    for lab in labs.values():
        assert lab.peers is not None and lab.peers.hosts == [dns]
        assert (lab.peers.port, lab.peers.api_port) == (ports["vxlan"], ports["peering"])
    assert len({lab.name for lab in labs.values()}) == 1, "one lab across the nodes"
    assert len({lab.bridge.address for lab in labs.values()}) == len(labs), "a bridge address per node"
    pools = [lab.bridge.pool for lab in labs.values()]
    assert all(p is not None for p in pools)
    assert not any(a.overlaps(b) for i, a in enumerate(pools) for b in pools[i + 1:] if a and b), "a pool per node"


def test_the_daemonset_runs_on_the_host_network_and_never_makes_host_paths():
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert all(v["hostPath"]["type"] in ("Directory", "CharDevice", "File") for v in pod["volumes"] if "hostPath" in v)
    container = pod["containers"][0]
    assert "/etc/bridgelab/lab/$(NODE_NAME).yaml" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "secretKeyRef" in env["BRIDGELAB_TOKEN"]["valueFrom"]
