"""A renderer for the subset of kustomize that infra/k8s uses, so the suite can render and
validate every overlay where no kustomize binary exists (none ships on PyPI; Debian's
kubernetes-client is 1.20, whose kustomize predates `labels` and `patches`). Where `kubectl`
is installed, tests compare this renderer's output with `kubectl kustomize`.

Supported: `resources` (files and kustomization folders), `namespace`, `labels` (pairs on
metadata only) and `patches` with a kind/name target and an inline JSON 6902 patch (add,
replace, remove). Any other field is refused, so a manifest never silently renders differently
here than under kustomize.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "labels", "patches"}
# Kinds kustomize knows to be cluster-scoped: it leaves their namespace alone. (It treats custom
# kinds as namespaced and sets one, which the API server drops for cluster-scoped objects.)
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "StorageClass", "PersistentVolume", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration", "APIService"}


class KustomizeError(ValueError):
    pass


def render(folder: str | Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build folder`` produces (order aside)."""
    folder = Path(folder)
    path = folder / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            objects += render(target)
        else:
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for patch in spec.get("patches", []):
        _apply_patch(objects, patch, path)
    if "namespace" in spec:
        _set_namespace(objects, spec["namespace"])
    for group in spec.get("labels", []):
        if group.get("includeSelectors") or group.get("includeTemplates"):
            raise KustomizeError(f"{path}: labels with includeSelectors/includeTemplates are not supported")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])
    return objects


def _set_namespace(objects: list[dict[str, Any]], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace


def _apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], origin: Path) -> None:
    target = patch.get("target") or {}
    if set(target) - {"kind", "name"} or "patch" not in patch or set(patch) - {"target", "patch"}:
        raise KustomizeError(f"{origin}: only inline JSON 6902 patches with a kind/name target are supported")
    ops = yaml.safe_load(patch["patch"])
    hits = [o for o in objects
            if target.get("kind", o["kind"]) == o["kind"]
            and target.get("name", o["metadata"]["name"]) == o["metadata"]["name"]]
    if not hits:
        raise KustomizeError(f"{origin}: patch target {target} matches no resource")
    for obj in hits:
        for op in ops:
            _json_patch(obj, op, origin)


def _json_patch(obj: dict[str, Any], op: dict[str, Any], origin: Path) -> None:
    keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].split("/")[1:]]
    parent = obj
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last = keys[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op["op"] == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif op["op"] == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[index]
        else:
            raise KustomizeError(f"{origin}: JSON patch op {op['op']!r} is not supported")
        return
    if op["op"] in ("replace", "remove") and last not in parent:
        raise KustomizeError(f"{origin}: {op['op']} of missing path {op['path']}")
    if op["op"] in ("add", "replace"):
        parent[last] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"{origin}: JSON patch op {op['op']!r} is not supported")
