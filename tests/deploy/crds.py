"""Validate custom resources offline against the openAPIV3Schema of their vendored CRD."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
CRD_FILES = ["monitoring.coreos.com_podmonitors.yaml", "monitoring.coreos.com_servicemonitors.yaml"]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused, as `kubectl apply`'s strict validation does."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def load_crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a jsonschema validator, for every version of every vendored CRD."""
    found: dict[tuple[str, str], Any] = {}
    for name in CRD_FILES:
        crd = yaml.safe_load((SCHEMAS / name).read_text())
        assert crd["kind"] == "CustomResourceDefinition", name
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            # the API server checks these itself; the CRD leaves metadata open
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            validator = jsonschema.Draft4Validator(schema)
            found[(f"{group}/{version['name']}", kind)] = validator
    return found
