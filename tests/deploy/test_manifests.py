"""Dockerfile, docker-compose and Kubernetes manifests, checked by reading (Docker cannot run here).

The invariants that matter in production: probes on the right paths, the policy ConfigMap
mounted as a directory (so hot reload sees the kubelet's symlink swap), the init container
checking the same file the server loads, provider keys from a Secret, one uvicorn worker,
every `effgate` command line accepted by the real CLI parsers, and every policy file valid.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import cli
from policies.check import main as policy_check
from tests.deploy.queries import DEPLOY, ROOT

K8S = DEPLOY / "k8s"


def k8s_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    for doc in k8s_docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def dockerfile_cmd() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "Dockerfile has no exec-form CMD"
    cmd: list[str] = yaml.safe_load(match.group(1))
    return cmd


def effgate_commands() -> list[tuple[str, list[str]]]:
    """Every `effgate ...` command line in the Dockerfile, compose file and k8s manifests."""
    found = [("Dockerfile CMD", dockerfile_cmd())]
    for name, service in compose()["services"].items():
        if service.get("command", [""])[0] == "effgate":
            found.append((f"compose {name}", service["command"]))
    deployment = find("Deployment", "effgate")["spec"]["template"]["spec"]
    for container in deployment["initContainers"] + deployment["containers"]:
        found.append((f"k8s {container['name']}", container["command"]))
    return found


def test_kustomization_lists_existing_files_but_no_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    assert "secret.example.yaml" not in kustomization["resources"]
    assert {d["kind"] for d in k8s_docs()} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodMonitor",
        "PodDisruptionBudget",
    }


def test_deployment_probes_policy_mount_init_check_and_secrets() -> None:
    pod = find("Deployment", "effgate")["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    (init,) = pod["initContainers"]
    port = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert port == {"http": 8080}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # the policy ConfigMap, as a directory: a subPath mount never sees updates
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == "effgate-policy"
    policy_path = gateway["command"][gateway["command"].index("--policy") + 1]
    for container in (gateway, init):
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "policy"]
        assert "subPath" not in mount
        assert Path(policy_path).parent == Path(mount["mountPath"])
    assert init["command"] == ["effgate", "policy", "check", policy_path]
    assert init["image"] == gateway["image"]
    config = find("ConfigMap", "effgate-policy")
    assert Path(policy_path).name in config["data"]
    # provider keys from a Secret, never inline
    assert {"secretRef": {"name": "effgate-provider-keys"}} in gateway["envFrom"]
    assert all("value" not in e or "KEY" not in e["name"] for e in gateway.get("env", []))
    # the Service named "effgate" would otherwise inject EFFGATE_PORT=tcp://...
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_and_pod_monitor_select_the_gateway_pods() -> None:
    labels = find("Deployment", "effgate")["spec"]["template"]["metadata"]["labels"]
    service = find("Service", "effgate")["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] == "http"
    monitor = find("PodMonitor", "effgate")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["podMetricsEndpoints"][0] == {
        "port": "http",
        "path": "/metrics",
        "interval": "15s",
    }
    annotations = find("Deployment", "effgate")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == "8080"


def test_dockerfile_runs_one_worker_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text.splitlines()
    assert "RUN pip install ." in text
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "EXPOSE 8080" in text
    assert "multiprocess mode" in text  # the why of one worker
    assert dockerfile_cmd() == ["effgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "--workers" not in text
    for source in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
        assert (ROOT / source).exists(), source


@pytest.mark.parametrize(
    "where,argv", effgate_commands(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_effgate_command_lines_parse(
    where: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse lists every unrecognised argument; a sentinel makes it stop before running
    assert argv[0] == "effgate"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv[1:], "--not-a-real-flag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("error: unrecognized arguments: --not-a-real-flag"), (where, err)


def test_compose_wires_the_demo_together() -> None:
    services = compose()["services"]
    assert set(services) == {
        "gateway",
        "upstream-small",
        "upstream-big",
        "redis",
        "prometheus",
        "grafana",
    }
    gateway = services["gateway"]
    assert gateway["environment"]["EFFGATE_REDIS_URL"] == "redis://redis:6379/0"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
    # the gateway's policy points at the fake upstreams by service name, port and model
    mount = next(v for v in gateway["volumes"] if v.endswith("/etc/effgate/policy:ro"))
    policy_path = gateway["command"][gateway["command"].index("--policy") + 1]
    policy = yaml.safe_load((DEPLOY / mount.split(":")[0] / Path(policy_path).name).read_text())
    for model in policy["models"]:
        match = re.fullmatch(r"http://([\w-]+):(\d+)/v1", model["base_url"])
        assert match, model["base_url"]
        host, port = match.groups()
        command = services[host]["command"]
        assert command[:2] == ["effgate", "fake-upstream"], host
        assert command[command.index("--port") + 1] == port
        assert model["upstream_model"] in command[command.index("--models") + 1].split(",")
    # Prometheus scrapes the gateway service on the port it listens on
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:8080"]
    assert shlex.join(gateway["command"]).endswith("--host 0.0.0.0 --port 8080")


def test_shipped_policies_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k8s_policy = tmp_path / "k8s-policy.yaml"
    k8s_policy.write_text(find("ConfigMap", "effgate-policy")["data"]["policy.yaml"])
    files = [str(DEPLOY / "compose" / "policy" / "policy.yaml"), str(k8s_policy)]

    def no_estimator(artifact: str | None) -> tuple[dict[str, float], float]:
        return {}, 1.0  # the deploy policies carry their own skills

    assert policy_check(files, skill_source=no_estimator) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("OK ") == 2


def test_policy_check_is_able_to_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels: []\nroutes: []\ndefault_route: auto\n")
    assert policy_check([str(bad)], skill_source=lambda a: ({}, 1.0)) == 1
