"""docker-compose and Kubernetes manifests, checked by reading (Docker cannot run here).

The invariants that matter in production: probes on the right paths, the policy and tenants
ConfigMaps mounted as directories (so hot reload sees the kubelet's symlink swap), the init
containers checking the same files the server loads, provider keys from a Secret, a
restricted security context, every replica behind the load balancer and scraped, budgets in
a Redis that persists them, every `effgate` command line accepted by the real CLI parsers,
and every policy and tenants file valid. Schemas: test_schemas.py; the image:
test_dockerfile.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import cli, tenants
from policies.check import main as policy_check
from tests.deploy.kustomize import render
from tests.deploy.queries import DEPLOY

K8S = DEPLOY / "k8s"
PRODUCTION = K8S / "overlays" / "production"


def k8s_docs(overlay: Path = PRODUCTION) -> list[dict[str, Any]]:
    return render(overlay)


def find(kind: str, name: str, overlay: Path = PRODUCTION) -> dict[str, Any]:
    for doc in k8s_docs(overlay):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {overlay}")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def dockerfile_cmd() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "Dockerfile has no exec-form CMD"
    cmd: list[str] = yaml.safe_load(match.group(1))
    return cmd


def pod_spec(overlay: Path = PRODUCTION) -> dict[str, Any]:
    spec: dict[str, Any] = find("Deployment", "effgate", overlay)["spec"]["template"]["spec"]
    return spec


def effgate_commands() -> list[tuple[str, list[str]]]:
    """Every `effgate ...` command line in the Dockerfile, compose file and k8s manifests."""
    found = [("Dockerfile CMD", dockerfile_cmd())]
    for name, service in compose()["services"].items():
        if service.get("command", [""])[0] == "effgate":
            found.append((f"compose {name}", service["command"]))
    for container in pod_spec()["initContainers"] + pod_spec()["containers"]:
        found.append((f"k8s {container['name']}", container["command"]))
    for component in (DEPLOY / "k8s" / "components").iterdir():
        for path in sorted(component.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CronJob":
                    pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                    for container in pod["containers"]:
                        found.append((f"k8s {path.stem} {container['name']}", container["command"]))
    return found


def test_kustomizations_list_existing_files_but_no_secret() -> None:
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for name in kustomization.get("resources", []) + kustomization.get("components", []):
            assert (path.parent / name).exists(), (path, name)
            assert "secret" not in name, "real keys never sit in the repository"
    assert {d["kind"] for d in k8s_docs()} == {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PodMonitor",
    }
    # dev: one replica, nothing that needs prometheus-operator or prometheus-adapter
    dev = K8S / "overlays" / "dev"
    assert {d["kind"] for d in k8s_docs(dev)} == {"Namespace", "Deployment", "Service", "ConfigMap"}
    assert find("Deployment", "effgate", dev)["spec"]["replicas"] == 1
    for overlay in (dev, PRODUCTION):
        (namespace,) = [d for d in k8s_docs(overlay) if d["kind"] == "Namespace"]
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert {d["metadata"].get("namespace") for d in k8s_docs(overlay)} == {
            None,  # the Namespace itself
            namespace["metadata"]["name"],
        }
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["metadata"]["name"] == "effgate-provider-keys"
    assert set(secret["stringData"].values()) == {"replace-me"}


def test_deployment_probes_config_mounts_init_checks_and_secrets() -> None:
    pod = pod_spec()
    (gateway,) = pod["containers"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    port = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert port == {"http": 8080}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = gateway["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    env = {e["name"]: e for e in gateway["env"]}
    tenants_path = env["EFFGATE_TENANTS_PATH"]["value"]
    policy_path = gateway["command"][gateway["command"].index("--policy") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # the ConfigMaps, as directories: a subPath mount never sees updates
    for volume, config_name, path, check in [
        ("policy", "effgate-policy", policy_path, ["effgate", "policy", "check"]),
        ("tenants", "effgate-tenants", tenants_path, ["effgate", "keys", "check"]),
    ]:
        assert volumes[volume]["configMap"]["name"] == config_name
        (init,) = [c for c in inits.values() if c["command"][:3] == check]
        assert init["command"] == [*check, path]
        assert init["image"] == gateway["image"]
        for container in (gateway, init):
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume]
            assert "subPath" not in mount and mount["readOnly"] is True
            assert Path(path).parent == Path(mount["mountPath"])
        assert Path(path).name in find("ConfigMap", config_name)["data"]
    # provider keys from a Secret, never inline
    assert {"secretRef": {"name": "effgate-provider-keys"}} in gateway["envFrom"]
    assert all("value" not in e or "KEY" not in e["name"] for e in gateway.get("env", []))
    # the Service named "effgate" would otherwise inject EFFGATE_PORT=tcp://...
    assert pod["enableServiceLinks"] is False
    # Redis: the chart's primary, its generated password expanded from a Secret
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "effgate-redis",
        "key": "redis-password",
    }
    names = [e["name"] for e in gateway["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("EFFGATE_REDIS_URL")
    assert env["EFFGATE_REDIS_URL"]["value"] == (
        "redis://:$(REDIS_PASSWORD)@effgate-redis-master:6379/0"
    )
    assert env["EFFGATE_LIMITS_FAIL_MODE"]["value"] in ("open", "closed")
    assert not (K8S / "redis.yaml").exists(), "Redis comes from its chart (redis-values.yaml)"
    # grace period > preStop sleep + the gateway's shutdown deadline (docs/operations.md)
    sleep = int(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= sleep + 30 + 5


def test_restricted_security_context_and_spread() -> None:
    pod = pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsNonRoot"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "memory" in container["resources"]["limits"]
        assert "cpu" not in container["resources"]["limits"]  # no throttling of the loop
    # the writable paths are volumes
    (gateway,) = pod["containers"]
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    assert {"/tmp", "/var/lib/effgate/records"} <= mounts
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    labels = find("Deployment", "effgate")["spec"]["template"]["metadata"]["labels"]
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert constraint["maxSkew"] == 1


def test_autoscaling_on_cpu_and_in_flight_requests() -> None:
    hpa = find("HorizontalPodAutoscaler", "effgate")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "effgate",
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pods = metrics["Pods"]["pods"]
    assert pods["metric"]["name"] == "effgate_in_flight_requests"
    # under the per-pod connection cap (EFFGATE_MAX_CONNECTIONS, 1024 by default)
    from gateway.settings import Settings

    cap = Settings.model_fields["max_connections"].default
    assert 0 < int(pods["target"]["averageValue"]) <= cap // 2
    # the HPA owns the replica count
    assert "replicas" not in find("Deployment", "effgate")["spec"]
    # prometheus-adapter serves that metric name, per pod, from the gateway's own series
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == pods["metric"]["name"]
    assert rule["seriesQuery"].startswith("effgate_in_flight_requests{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.GroupBy>>" in rule["metricsQuery"]
    metrics_doc = (DEPLOY.parent / "docs" / "contracts.md").read_text()
    assert "effgate_in_flight_requests" in metrics_doc
    pdb = find("PodDisruptionBudget", "effgate")["spec"]
    assert pdb["maxUnavailable"] == 1 or pdb.get("minAvailable", 0) < hpa["minReplicas"]


def test_service_and_monitors_select_the_gateway_pods() -> None:
    labels = find("Deployment", "effgate")["spec"]["template"]["metadata"]["labels"]
    service = find("Service", "effgate")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    monitor = find("PodMonitor", "effgate")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    endpoint = {"port": "http", "path": "/metrics", "interval": "15s"}
    assert monitor["podMetricsEndpoints"][0] == endpoint
    (service_monitor,) = yaml.safe_load_all(
        (K8S / "components/servicemonitor/servicemonitor.yaml").read_text()
    )
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0] == endpoint
    annotations = find("Deployment", "effgate")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == "8080"


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
        "lb",
        "gateway",
        "upstream-small",
        "upstream-big",
        "redis",
        "prometheus",
        "grafana",
    }
    gateway = services["gateway"]
    assert gateway["environment"]["EFFGATE_REDIS_URL"] == "redis://redis:6379/0"
    assert gateway["deploy"]["replicas"] >= 2
    assert "ports" not in gateway, "replicas cannot share a host port: clients go through lb"
    assert gateway["environment"]["EFFGATE_LIMITS_FAIL_MODE"] in ("open", "closed")
    # fake upstreams: their own health check (the image's asks 8080, they listen elsewhere)
    for name in ("upstream-small", "upstream-big"):
        port = services[name]["command"][services[name]["command"].index("--port") + 1]
        assert f"127.0.0.1:{port}/healthz" in services[name]["healthcheck"]["test"][-1]
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
    # Prometheus scrapes every replica (one A record each), on the port they listen on
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (dns,) = prometheus["scrape_configs"][0]["dns_sd_configs"]
    assert dns == {"names": ["gateway"], "type": "A", "port": 8080, "refresh_interval": "15s"}
    assert shlex.join(gateway["command"]).endswith("--host 0.0.0.0 --port 8080")
    # Grafana gets the datasource and the dashboards provisioned
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").is_file()
    assert (DEPLOY / "grafana/provisioning/dashboards/effgate.yml").is_file()
    assert grafana["/var/lib/grafana/dashboards/effgate"] == "./grafana/dashboards"
    # Prometheus loads the rule files from the mounted directory
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert prometheus["rule_files"] == ["alerts.yml", "recording.yml"]


def test_compose_tenants_file_is_mounted_and_valid() -> None:
    gateway = compose()["services"]["gateway"]
    path = Path(gateway["environment"]["EFFGATE_TENANTS_PATH"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in gateway["volumes"] if ":" in v}
    source = DEPLOY / mounts[str(path.parent)] / path.name
    assert tenants.check(str(source)) == []
    # the demo keys the file's header publishes are the ones its digests are of
    loaded = tenants.build_tenants(source.read_bytes(), path=str(source))
    text = source.read_text()
    for key in re.findall(r"\b(eg-demo-[\w-]+)", text):
        digest = tenants.digest(key)
        assert digest in loaded.by_digest or digest in loaded.admin, key


def test_redis_persists_budgets_with_aof() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"]), "AOF on a volume"
    assert "redis" in compose()["volumes"]


def haproxy_config() -> dict[str, list[str]]:
    """Sections of haproxy.cfg ("backend gateways" -> its lines), comments dropped."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in (DEPLOY / "compose" / "haproxy" / "haproxy.cfg").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line.startswith((" ", "\t")):
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    return sections


def test_load_balancer_spreads_over_ready_replicas() -> None:
    services = compose()["services"]
    lb = services["lb"]
    cfg = haproxy_config()
    (mount,) = lb["volumes"]
    assert mount == "./compose/haproxy:/usr/local/etc/haproxy:ro"
    assert lb["depends_on"]["gateway"]["condition"] == "service_healthy"
    # published 8080 is where the frontend binds
    assert "8080:8080" in lb["ports"]
    assert "bind :8080" in cfg["frontend effgate"]
    backend = cfg["backend gateways"]
    assert "option httpchk GET /readyz" in backend
    (template,) = [line for line in backend if line.startswith("server-template")]
    _, _, slots, target = template.split()
    assert target == "gateway:8080"
    assert int(slots) >= services["gateway"]["deploy"]["replicas"]
    assert any("resolvers docker" in line for line in backend)
    assert "nameserver dns 127.0.0.11:53" in cfg["resolvers docker"]
    # no request's wait for its answer to start (its deadline: retries and fallbacks
    # included), nor any single call (timeouts.total_s), is cut by the proxy's idle timeouts
    from policies.compiled import deadline_for
    from policies.loader import load_policy

    policy = load_policy(
        DEPLOY / "compose" / "policy" / "policy.yaml", skills={}, discrimination=1.7
    )
    deadlines = [deadline_for(policy, r) for r in (*policy.routes, "direct")]
    assert None not in deadlines, "a request without a deadline can outlast the proxy"
    longest = max([*(d for d in deadlines if d is not None),
                   *(m.timeouts.total_s for m in policy.models.values())])  # fmt: skip
    timeouts = {
        line.split()[1]: line.split()[2] for line in cfg["defaults"] if line.startswith("timeout")
    }
    for side in ("client", "server"):
        assert int(timeouts[side].rstrip("s")) > longest, (side, longest)
    # the gateway keeps idle connections open longer than the proxy reuses them
    env = services["gateway"]["environment"]
    assert int(env["EFFGATE_KEEP_ALIVE_S"]) > 5
    # on SIGTERM it serves on (/readyz at 503) until the checks have marked it down: `fall`
    # failed checks `inter` apart, the first up to `inter` after the signal
    (defaults,) = [line for line in backend if line.startswith("default-server")]
    words = defaults.split()
    inter = int(words[words.index("inter") + 1].rstrip("s"))
    fall = int(words[words.index("fall") + 1])
    delay = float(env["EFFGATE_SHUTDOWN_DELAY_S"])
    assert delay >= inter * fall
    # and Compose waits out the delay plus the gateway's shutdown deadline before SIGKILL
    from gateway.settings import Settings

    grace = int(services["gateway"]["stop_grace_period"].rstrip("s"))
    assert grace > delay + Settings.model_fields["shutdown_timeout_s"].default


def test_k8s_tenants_configmap_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(find("ConfigMap", "effgate-tenants")["data"]["tenants.yaml"])
    assert tenants.check(str(path)) == []


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
