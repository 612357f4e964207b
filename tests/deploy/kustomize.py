"""A pure-Python render of deploy/k8s's kustomizations, so the tests need no kubectl.

It implements the subset of kustomize the deploy files use, and refuses any other field: a
kustomization that grows a feature this does not know fails here instead of being rendered
wrongly. Where kubectl is installed, test_schemas.py checks that this render and
`kubectl kustomize` agree resource for resource.

Supported: `resources` (files, or directories holding a kustomization), `components`
(directories holding a `kind: Component`), `patches` (RFC 6902 JSON patches from a file, with
a `target` of group/version/kind/name), `namespace`, `images` (newName/newTag).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "namespace",
    "images",
}
# kinds without a namespace among those the deploy files use
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def load_kustomization(directory: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(doc) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: kustomization fields the test render lacks: {unknown}"
    return doc


def load_resources(path: Path) -> list[Resource]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[Resource]:
    """The resources `kubectl kustomize DIRECTORY` prints, in no particular order."""
    kustomization = load_kustomization(directory)
    expected = {"Kustomization": "kustomize.config.k8s.io/v1beta1"}
    assert kustomization.get("kind", "Kustomization") == "Kustomization", directory
    assert kustomization["apiVersion"] == expected["Kustomization"], directory
    return _build(directory, kustomization)


def _build(directory: Path, kustomization: dict[str, Any]) -> list[Resource]:
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else load_resources(path)
    for entry in kustomization.get("components", []):
        path = (directory / entry).resolve()
        component = load_kustomization(path)
        assert component["kind"] == "Component", path
        assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", path
        # a component's own resources join first; its patches then see everything so far
        own = _build(path, {k: v for k, v in component.items() if k != "patches"})
        resources = _apply_patches(path, component, resources + own)
    resources = _apply_patches(directory, kustomization, resources)
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    return resources


def _apply_patches(
    directory: Path, kustomization: dict[str, Any], resources: list[Resource]
) -> list[Resource]:
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path", "target"}, f"{directory}: only file + target patches"
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(ops, list), f"{patch['path']}: only RFC 6902 JSON patches"
        targets = [r for r in resources if _matches(r, patch["target"])]
        assert targets, f"{directory}: patch {patch['path']} matches no resource"
        for resource in targets:
            for op in ops:
                json_patch(resource, op)
    return resources


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    group, _, version = resource["apiVersion"].rpartition("/")
    have = {
        "group": group,
        "version": version,
        "kind": resource["kind"],
        "name": resource["metadata"]["name"],
    }
    unknown = set(target) - set(have)
    assert not unknown, f"patch target fields the test render lacks: {unknown}"
    return all(have[k] == v for k, v in target.items())


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Resource, op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, remove, replace), in place."""
    *parents, last = _pointer(op["path"])
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    kind = op["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "remove":
            del node[index]
        elif kind == "replace":
            assert index < len(node), op
            node[index] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"JSON patch op the test render lacks: {kind}")
        return
    if kind == "add":
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    elif kind == "replace":
        assert last in node, f"replace of a missing {op['path']}"
        node[last] = copy.deepcopy(op["value"])
    else:
        raise AssertionError(f"JSON patch op the test render lacks: {kind}")


def pod_template(resource: Resource) -> dict[str, Any]:
    """The pod template of a workload (a Deployment's, or a CronJob's jobs'), else {}."""
    spec = resource.get("spec", {})
    if resource["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template: dict[str, Any] = spec.get("template", {})
    return template


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    assert set(image) <= {"name", "newName", "newTag"}, image
    for resource in resources:
        pod = pod_template(resource).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            name = container["image"]
            base = name.split("@", 1)[0]
            if ":" in base.rsplit("/", 1)[-1]:
                base = base.rsplit(":", 1)[0]
            if base != image["name"]:
                continue
            tag = image.get("newTag")
            container["image"] = image.get("newName", base) + (f":{tag}" if tag else "")
