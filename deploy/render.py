"""Render a kustomize directory in pure Python: exactly the part of kustomize that deploy/k8s uses.

CI has no kustomize binary, so the manifest tests render the overlays with this; clusters still
get them with ``kubectl apply -k``, and tests/deploy checks that both agree wherever kubectl is
installed. Supported, in kustomize's order, and nothing else (any other field is an error, never
silently skipped):

1. ``resources``: YAML files, and directories holding a kustomization.
2. ``components``: directories holding a ``kind: Component`` kustomization, applied in order.
3. ``secretGenerator``: ``envs`` files (KEY=value lines) and ``literals``, with
   ``options: {disableNameSuffixHash: true}`` (no hash suffix, so no name references to rewrite).
4. ``patches``: strategic-merge patches from ``path``, applied to the object of the patch's own
   kind and name, or to every object that ``target`` picks (``kind``; ``name`` as a regular
   expression). Lists of containers, env, volumes and volume mounts merge by key (the patch's
   items first, as kustomize orders them); other lists are replaced; a null deletes a field.
5. ``namespace``, ``labels`` (``pairs``; ``includeTemplates`` adds them to pod and volume claim
   templates too), ``replicas``, ``images``.

Usage: ``python deploy/render.py deploy/k8s/overlays/dev > dev.yaml``
"""

from __future__ import annotations

import base64
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

# Lists merged item by item under a strategic-merge patch, by the key kustomize uses.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "CustomResourceDefinition",
}
FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "secretGenerator",
    "patches",
    "namespace",
    "labels",
    "replicas",
    "images",
}


class RenderError(Exception):
    """The kustomization is wrong, or uses a kustomize feature this renderer does not have."""


def render(directory: Path) -> list[Obj]:
    """The objects ``kustomize build directory`` would print (in file order, not kustomize's)."""
    return _build(Path(directory), [], kind="Kustomization")


def _build(directory: Path, objects: list[Obj], *, kind: str) -> list[Obj]:
    spec = _kustomization(directory, kind)
    for entry in spec.get("resources", []):
        path = directory / entry
        for obj in render(path) if path.is_dir() else _load(path):
            _add(objects, obj)
    for entry in spec.get("components", []):
        _build(directory / entry, objects, kind="Component")
    for generator in spec.get("secretGenerator", []):
        _add(objects, _secret(directory, generator))
    for patch in spec.get("patches", []):
        _patch(objects, directory, patch)
    if namespace := spec.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for label in spec.get("labels", []):
        _label(objects, label)
    for replicas in spec.get("replicas", []):
        _replicas(objects, replicas)
    for image in spec.get("images", []):
        for container in _containers(objects):
            container["image"] = _new_image(container["image"], image)
    return objects


def _kustomization(directory: Path, kind: str) -> Obj:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or spec.get("kind", "Kustomization") != kind:
        raise RenderError(f"{path}: expected a {kind}")
    if unknown := set(spec) - FIELDS:
        raise RenderError(f"{path}: unsupported fields {sorted(unknown)}")
    return spec


def _load(path: Path) -> list[Obj]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
            raise RenderError(f"{path}: every document needs apiVersion, kind and metadata")
    return documents


def _key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _add(objects: list[Obj], obj: Obj) -> None:
    if any(_key(existing) == _key(obj) for existing in objects):
        raise RenderError(f"duplicate object {_key(obj)}")
    objects.append(obj)


def _secret(directory: Path, generator: Obj) -> Obj:
    if unknown := set(generator) - {"name", "envs", "literals", "options"}:
        raise RenderError(f"secretGenerator {generator.get('name')}: unsupported fields {sorted(unknown)}")
    if generator.get("options") != {"disableNameSuffixHash": True}:
        raise RenderError(f"secretGenerator {generator['name']}: set options.disableNameSuffixHash: true")
    lines = list(generator.get("literals", []))
    for env_file in generator.get("envs", []):
        path = directory / env_file
        if not path.is_file():
            raise RenderError(f"secretGenerator {generator['name']}: {path} is missing")
        lines += [line.lstrip() for line in path.read_text().splitlines()]
    data: dict[str, str] = {}
    for line in lines:
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
            raise RenderError(f"secretGenerator {generator['name']}: {line.split('=')[0]!r} is not KEY=value")
        data[key] = base64.b64encode(value.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": generator["name"]},
        "type": "Opaque",
        "data": data,
    }


def _patch(objects: list[Obj], directory: Path, patch: Obj) -> None:
    if unknown := set(patch) - {"path", "target"}:
        raise RenderError(f"patch {patch}: unsupported fields {sorted(unknown)}")
    documents = _load(directory / patch["path"])
    if len(documents) != 1:
        raise RenderError(f"{directory / patch['path']}: one strategic-merge patch per file")
    body = documents[0]
    target = patch.get("target", {"kind": body["kind"], "name": re.escape(body["metadata"]["name"])})
    if unknown := set(target) - {"kind", "name"}:
        raise RenderError(f"patch {patch['path']}: unsupported target fields {sorted(unknown)}")
    matched = [
        i
        for i, obj in enumerate(objects)
        if obj["kind"] == target["kind"] and re.fullmatch(target.get("name", ".*"), obj["metadata"]["name"])
    ]
    if not matched:
        raise RenderError(f"patch {patch['path']}: no object matches {target}")
    for i in matched:
        named = copy.deepcopy(body)
        named["metadata"]["name"] = objects[i]["metadata"]["name"]
        objects[i] = _merge(objects[i], named)


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    """A strategic merge of ``patch`` into ``base`` (see the module docstring for the rules)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _merge(base[key], value, key) if key in base else copy.deepcopy(value)
        return merged
    if field in MERGE_KEYS and isinstance(base, list) and isinstance(patch, list):
        # As kustomize orders them: the patch's items first, then the items only the base has.
        key = MERGE_KEYS[field]
        originals = {item[key]: item for item in base}
        patched = [
            _merge(originals[item[key]], item) if item[key] in originals else copy.deepcopy(item) for item in patch
        ]
        return patched + [item for item in base if item[key] not in {new[key] for new in patch}]
    return copy.deepcopy(patch)


def _label(objects: list[Obj], label: Obj) -> None:
    if unknown := set(label) - {"pairs", "includeTemplates"}:
        raise RenderError(f"labels: unsupported fields {sorted(unknown)} (includeSelectors is not supported)")
    for obj in objects:
        targets = [obj]
        if label.get("includeTemplates"):
            spec = obj.get("spec", {})
            targets += [spec["template"]] if isinstance(spec.get("template"), dict) else []
            targets += spec.get("volumeClaimTemplates", [])
        for target in targets:
            target.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])


def _replicas(objects: list[Obj], replicas: Obj) -> None:
    matched = [
        obj
        for obj in objects
        if obj["kind"] in {"Deployment", "StatefulSet"} and obj["metadata"]["name"] == replicas["name"]
    ]
    if not matched:
        raise RenderError(f"replicas: no Deployment or StatefulSet named {replicas['name']}")
    for obj in matched:
        obj["spec"]["replicas"] = replicas["count"]


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a workload (Deployment, StatefulSet, DaemonSet, Job, ...), else None."""
    template = obj.get("spec", {}).get("template")
    return template.get("spec") if isinstance(template, dict) else None


def _containers(objects: list[Obj]) -> list[Obj]:
    specs = [spec for spec in map(pod_spec, objects) if spec]
    return [c for spec in specs for c in [*spec.get("initContainers", []), *spec["containers"]]]


def _new_image(image: str, rule: Obj) -> str:
    name, at, digest = image.partition("@")
    repository, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:  # no tag; a colon there belonged to a registry's port
        repository, tag = name, ""
    if repository != rule["name"]:
        return image
    reference = f"@{digest}" if at else f":{tag}" if tag else ""
    if "digest" in rule:
        reference = f"@{rule['digest']}"
    elif "newTag" in rule:
        reference = f":{rule['newTag']}"
    return f"{rule.get('newName', repository)}{reference}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        objects = render(Path(argv[1]))
    except RenderError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
