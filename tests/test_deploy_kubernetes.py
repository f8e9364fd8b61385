"""examples/deploy for Kubernetes: the manifests and the Dockerfile pass their linters, the
DaemonSet's pieces agree with each other and with the agent, and the image's entry point picks
kernel headers the way its comments say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from antiprof_core.testing import antiprof_command

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "examples/deploy"
BIN = Path(sys.executable).parent


def documents(name: str) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc}


def test_manifests_pass_kubernetes_validate_strictly() -> None:
    files = [str(DEPLOY / "kubernetes.yaml"), str(DEPLOY / "otel-collector.yaml")]
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 10


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(BIN / "hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_daemonset_mounts_probes_names_and_config_agree(tmp_path: Path) -> None:
    manifests = documents("kubernetes.yaml")
    pod = manifests["DaemonSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostPID"] is True
    # The node's headers are mounted beside the image's, never over them.
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/host/lib/modules", "/host/usr/src"} <= mounts
    assert not mounts & {"/lib/modules", "/usr/src"}
    # host.name and k8s.node.name come from the node, through variables the agent reads.
    env = {item["name"]: item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for item in container["env"]}
    assert env["ANTIPROF_HOSTNAME"] == env["NODE_NAME"] == "spec.nodeName"
    config_text = manifests["ConfigMap"]["data"]["antiprof.toml"]
    assert 'node_name = "${NODE_NAME}"' in config_text
    # The probes hit the metrics address the config serves on.
    match = re.search(r'metrics_address = "0\.0\.0\.0:(\d+)"', config_text)
    assert match is not None, config_text
    port = int(match.group(1))
    ports = {item["name"]: item["containerPort"] for item in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert ports["metrics"] == port
    # The config is valid for the agent in the image (core + otlp), with the pod's variables set.
    config = tmp_path / "antiprof.toml"
    config.write_text(config_text)
    checked = subprocess.run(
        antiprof_command("config", "check", str(config)),
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_NAME": "node-a", "CLUSTER_NAME": "production"},
    )
    assert checked.returncode == 0, checked.stderr
    assert "consumers: otlp (otlp)" in checked.stdout
    # The image's command line is the DaemonSet's.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"^CMD (.*)$", dockerfile, re.MULTILINE)
    assert match is not None, dockerfile
    cmd = json.loads(match.group(1))
    assert cmd == container["args"]


def test_collector_receives_otlp_and_adds_kubernetes_attributes_to_profiles() -> None:
    config = yaml.safe_load(documents("otel-collector.yaml")["ConfigMap"]["data"]["config.yaml"])
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    profiles = config["service"]["pipelines"]["profiles"]
    assert profiles["receivers"] == ["otlp"] and "k8sattributes" in profiles["processors"]
    associations = config["processors"]["k8sattributes"]["pod_association"]
    assert {"from": "resource_attribute", "name": "container.id"} in associations[0]["sources"]


def test_agent_takes_host_and_node_names_from_the_pod_environment(tmp_path: Path) -> None:
    output = tmp_path / "windows.jsonl"
    config = tmp_path / "antiprof.toml"
    config.write_text(
        f"""
[agent]
node_name = "${{NODE_NAME}}"
[sampler]
source = "synthetic"
window = "100ms"
[consumers.json]
path = "{output}"
"""
    )
    env = {**os.environ, "NODE_NAME": "node-a", "ANTIPROF_HOSTNAME": "node-a"}
    done = subprocess.run(
        antiprof_command("run", "-c", str(config), "--duration", "150ms"), capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    host = json.loads(output.read_text().splitlines()[0])["host"]
    assert (host["hostname"], host["node_name"]) == ("node-a", "node-a")


def run_entrypoint(tmp_path: Path, host_root: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    modules = tmp_path / "image/lib/modules"
    env = {
        **os.environ,
        "ANTIPROF_MODULES_DIR": str(modules),
        "ANTIPROF_HOST_ROOT": str(host_root),
        "ANTIPROF_KHEADERS": str(tmp_path / "no-kheaders"),
        "ANTIPROF_BIN": "/bin/echo",
    }
    command = ["sh", str(DEPLOY / "entrypoint.sh"), "run", "-c", "x"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    return done, modules / os.uname().release / "build"


def test_entrypoint_prefers_the_nodes_headers_through_an_absolute_symlink(tmp_path: Path) -> None:
    release = os.uname().release
    host = tmp_path / "host"
    (host / f"usr/src/linux-headers-{release}/include").mkdir(parents=True)
    (host / f"lib/modules/{release}").mkdir(parents=True)
    (host / f"lib/modules/{release}/build").symlink_to(f"/usr/src/linux-headers-{release}")  # as on the node
    done, build = run_entrypoint(tmp_path, host)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "run -c x\n"  # the agent is exec'd with the container's arguments
    assert os.readlink(build) == str(host / f"usr/src/linux-headers-{release}")
    assert json.loads(done.stderr)["message"].startswith("using the node's kernel headers")


def test_entrypoint_falls_back_to_the_images_debian_headers(tmp_path: Path) -> None:
    fallback = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
    assert fallback, "scripts/setup-system.sh installs linux-headers-amd64"
    done, build = run_entrypoint(tmp_path, tmp_path / "empty-host")
    assert done.returncode == 0, done.stderr
    assert os.readlink(build) == str(fallback[-1])
    entry = json.loads(done.stderr)
    assert entry["logger"] == "antiprof.entrypoint" and f"using {fallback[-1].name} from the image" in entry["message"]
