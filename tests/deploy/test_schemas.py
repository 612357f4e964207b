"""The deploy files against their published schemas, offline (tests/deploy/schemas/README.md).

- deploy/docker-compose.yml: the Compose Specification JSON schema (vendored).
- deploy/k8s: every manifest file, and every resource of every rendered kustomization (the
  pure-Python render in kustomize.py), against the Kubernetes schemas `kubernetes-validate`
  bundles, strict (unknown fields fail), for the oldest and newest Kubernetes versions
  supported here; PodMonitor and ServiceMonitor against the vendored prometheus-operator CRDs.
- deploy/k8s/redis-values.yaml: the Bitnami redis chart's values.schema.json, plus a walk
  that every key set is one the chart knows (its schema alone accepts unknown keys).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.crds import load_crd_validators
from tests.deploy.kustomize import Resource, load_resources, pod_template, render
from tests.deploy.queries import DEPLOY

SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S = DEPLOY / "k8s"
# the oldest version with every field the manifests use (topologySpreadConstraints'
# matchLabelKeys is on by default from 1.27) that is still maintained, and the newest bundled
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
KUSTOMIZATIONS = sorted(
    p.parent.relative_to(K8S).as_posix()
    for p in K8S.rglob("kustomization.yaml")
    if yaml.safe_load(p.read_text()).get("kind", "Kustomization") == "Kustomization"
)
# resource files, not kustomizations, patches or Helm values
MANIFESTS = sorted(
    p.relative_to(K8S).as_posix()
    for p in K8S.rglob("*.yaml")
    if p.name != "kustomization.yaml"
    and "kind" in (yaml.safe_load(p.read_text().split("\n---")[0]) or [])
)
CRDS = load_crd_validators()


def key(resource: Resource) -> tuple[str, str, str]:
    meta = resource["metadata"]
    return resource["kind"], meta.get("namespace", ""), meta["name"]


def validate(resource: Resource) -> list[str]:
    """Every schema error of one resource (empty: valid), for every Kubernetes version."""
    crd = CRDS.get((resource["apiVersion"], resource["kind"]))
    if crd is not None:
        return [f"{list(e.path)}: {e.message}" for e in crd.iter_errors(resource)]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"k8s {version}: {list(e.path)}: {e.message}")
    return errors


# -- compose ---------------------------------------------------------------------------------


def compose_validator() -> Any:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_compose_file_matches_the_compose_specification() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in compose_validator().iter_errors(doc)]
    assert errors == []


def test_compose_schema_is_able_to_fail() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    doc["services"]["gateway"]["helthcheck"] = {}
    doc["services"]["redis"]["ports"] = "6379"
    messages = " ".join(e.message for e in compose_validator().iter_errors(doc))
    assert "helthcheck" in messages and "'6379' is not of type 'array'" in messages


# -- Kubernetes ------------------------------------------------------------------------------


def test_the_versions_validated_are_bundled() -> None:
    bundled = kubernetes_validate.utils.all_versions()
    assert set(KUBERNETES_VERSIONS) <= set(bundled)


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_every_manifest_file_validates(manifest: str) -> None:
    resources = load_resources(K8S / manifest)
    assert resources
    for resource in resources:
        assert validate(resource) == [], (manifest, key(resource))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_kustomization_validates(kustomization: str) -> None:
    resources = render(K8S / kustomization)
    keys = [key(r) for r in resources]
    assert len(keys) == len(set(keys)), f"duplicate resources: {keys}"
    for resource in resources:
        assert validate(resource) == [], (kustomization, key(resource))


def test_overlays_and_components_are_all_used_and_rendered() -> None:
    assert {"base", "overlays/dev", "overlays/production"} <= set(KUSTOMIZATIONS)
    components = {
        p.parent.relative_to(K8S).as_posix()
        for p in K8S.rglob("kustomization.yaml")
        if yaml.safe_load(p.read_text()).get("kind") == "Component"
    }
    assert components == {
        "components/autoscaling",
        "components/podmonitor",
        "components/records-export",
        "components/servicemonitor",
    }
    used = set()
    for overlay in KUSTOMIZATIONS:
        doc = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
        used |= {(K8S / overlay / c).resolve() for c in doc.get("components", [])}
    # the ServiceMonitor is the documented alternative to the PodMonitor, and the records
    # export an option (it needs Redis memory and a volume); both rendered below
    unused = {(K8S / c).resolve() for c in components} - used
    assert unused == {
        (K8S / c).resolve() for c in ("components/servicemonitor", "components/records-export")
    }


def test_servicemonitor_component_renders_in_place_of_the_podmonitor(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "effgate",
                "resources": [str(K8S / "base")],
                "components": [str(K8S / "components/servicemonitor")],
            }
        )
    )
    resources = render(overlay)
    kinds = {r["kind"] for r in resources}
    assert "ServiceMonitor" in kinds and "PodMonitor" not in kinds
    for resource in resources:
        assert validate(resource) == [], key(resource)


def test_records_export_component_streams_and_exports(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    production = yaml.safe_load((K8S / "overlays/production/kustomization.yaml").read_text())
    doc = {**production, "resources": [str(K8S / "overlays/production")]}
    doc["components"] = [str(K8S / "components/records-export")]
    del doc["namespace"]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    resources = render(overlay)
    for resource in resources:
        assert validate(resource) == [], key(resource)
    by_kind = {r["kind"]: r for r in resources}
    gateway = pod_template(by_kind["Deployment"])["spec"]["containers"][0]
    job = pod_template(by_kind["CronJob"])["spec"]
    (export,) = job["containers"]
    env = {e["name"]: e for e in gateway["env"]}
    job_env = {e["name"]: e for e in export["env"]}
    # the job reads the stream the replicas write, in the same Redis, with the same secret
    stream = env["EFFGATE_RECORDS_REDIS_STREAM"]["value"]
    assert job_env["EFFGATE_RECORDS_REDIS_STREAM"]["value"] == stream
    for name in ("EFFGATE_REDIS_URL", "REDIS_PASSWORD"):
        assert job_env[name] == env[name]
    assert int(env["EFFGATE_RECORDS_STREAM_MAXLEN"]["value"]) <= 300_000  # Redis's 1Gi
    # it appends to a .jsonl file on the claim, which outlives the job's pods
    command = export["command"]
    assert command[:3] == ["effgate", "records", "export"]
    out = Path(command[command.index("--out") + 1])
    (mount,) = [m for m in export["volumeMounts"] if out.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in job["volumes"] if v["name"] == mount["name"]]
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == by_kind["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert by_kind["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"
    assert export["image"] == gateway["image"] != "effgate"  # the overlay's image, both
    assert job["enableServiceLinks"] is False  # no EFFGATE_PORT from the Service


def test_kubernetes_schemas_are_able_to_fail() -> None:
    def broken(field: str, value: Any) -> str:
        (deployment,) = [r for r in render(K8S / "base") if r["kind"] == "Deployment"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        container[field] = value
        return " ".join(validate(deployment))  # kubernetes-validate names the first error

    assert "'readOnlyRootFS' was unexpected" in broken("readOnlyRootFS", True)  # misspelt
    assert "'8080' is not of type 'integer'" in broken("ports", [{"containerPort": "8080"}])
    (monitor,) = load_resources(K8S / "components/podmonitor/podmonitor.yaml")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert any("intervall" in e for e in validate(monitor))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_python_render_agrees_with_kubectl_kustomize(kustomization: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = {key(r): r for r in yaml.safe_load_all(out) if r}
    mine = {key(r): r for r in render(K8S / kustomization)}
    assert sorted(mine) == sorted(theirs)
    for name, resource in mine.items():
        assert resource == theirs[name], name


# -- Helm values -----------------------------------------------------------------------------


def unknown_keys(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of `values` that the chart's schema does not list (where it lists properties)."""
    if not isinstance(values, dict) or "properties" not in schema:
        return []
    found = []
    for name, value in values.items():
        where = f"{path}.{name}" if path else name
        if name not in schema["properties"]:
            found.append(where)
        else:
            found += unknown_keys(value, schema["properties"][name], where)
    return found


def test_redis_values_match_the_chart_schema() -> None:
    schema = json.loads((SCHEMAS / "bitnami-redis-values.schema.json").read_text())
    values = yaml.safe_load((K8S / "redis-values.yaml").read_text())
    errors = [
        f"{list(e.path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(values)
    ]
    assert errors == []
    assert unknown_keys(values, schema) == []
    assert unknown_keys({"master": {"persistance": {}}}, schema) == ["master.persistance"]


def test_redis_values_persist_with_aof_and_never_evict() -> None:
    values = yaml.safe_load((K8S / "redis-values.yaml").read_text())
    config = dict(
        line.split(None, 1)
        for line in values["commonConfiguration"].splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert config["appendonly"] == "yes"
    assert config["maxmemory-policy"] == "noeviction"
    assert values["master"]["persistence"]["enabled"] is True
    assert values["auth"]["enabled"] is True
    text = (K8S / "redis-values.yaml").read_text()
    assert "sentinel:" in text and "enabled: true" in text  # the Sentinel option, documented
