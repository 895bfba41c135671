"""Kubernetes manifests and images: every overlay renders (deploy/render.py, no kustomize binary
needed), validates offline against the Kubernetes API schemas, and keeps the invariants SREs rely
on; each image installs what its service imports.

Every ``check_*`` function returns the problems it finds (empty: all good), so
``test_checks_catch_broken_manifests`` can feed them broken manifests and watch them fail.
"""

from __future__ import annotations

import ast
import base64
import copy
import importlib
import importlib.metadata
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from ipaddress import ip_network
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import redis
import yaml
from studyassist.core.config import CommonSettings, ConfigError
from studyassist.core.identity import resolve_mesh_key

from deploy.render import Obj, RenderError, pod_spec, render
from tests.deploy.conftest import OVERLAYS, REPO

K8S_VERSION: str = kubernetes_validate.latest_version()
PORTS = {"gateway": 8080, "chat": 50051, "storage": 50052, "embedding": 50053, "metrics": 50054}
GRPC_SERVICES = ("chat", "storage", "embedding", "metrics")
SCRAPE_PORTS = {9464, 8889}  # Prometheus may scrape these from the "monitoring" namespace
# The embedding queue depth as Prometheus sees it (tests/deploy/test_exported_metrics.py checks it is exported).
QUEUE_DEPTH_METRIC = "embedding_queue_depth"
NAME = "app.kubernetes.io/name"
Check = Callable[[list[Obj]], list[str]]


# Rendering: the k8s_tree and rendered fixtures live in tests/deploy/conftest.py.


# ---------------------------------------------------------------- helpers


def find(objects: Iterable[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def workloads(objects: Iterable[Obj]) -> list[Obj]:
    return [o for o in objects if pod_spec(o) is not None]


def spec_of(obj: Obj) -> Obj:
    spec = pod_spec(obj)
    assert spec is not None, f"{obj['kind']}/{obj['metadata']['name']} has no pod template"
    return spec


def container(objects: list[Obj], workload: str) -> Obj:
    """The first container of the Deployment or StatefulSet named ``workload``."""
    obj = find(objects, "Deployment", workload) or find(objects, "StatefulSet", workload)
    assert obj is not None, f"no workload {workload}"
    first: Obj = spec_of(obj)["containers"][0]
    return first


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector ({} selects everything) matches ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def pods(objects: Iterable[Obj]) -> dict[str, dict[str, str]]:
    """Workload name -> the labels of its pods."""
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)}


def selected(objects: list[Obj], selector: Obj) -> set[str]:
    return {name for name, labels in pods(objects).items() if selects(selector, labels)}


def config(objects: list[Obj]) -> dict[str, str]:
    cm = find(objects, "ConfigMap", "studyassist-config")
    return dict(cm["data"]) if cm else {}


# ---------------------------------------------------------------- checks


def check_schema(objects: list[Obj]) -> list[str]:
    """Every object is valid for the newest Kubernetes that kubernetes-validate knows, strictly
    (an unknown field, a typo, is an error)."""
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    return problems


def check_containers(objects: list[Obj]) -> list[str]:
    """Probes, requests and limits, and a hardened security context for every container."""
    problems = []
    for workload in workloads(objects):
        spec = spec_of(workload)
        pod_security = spec.get("securityContext", {})
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        scratch = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"]:
            at = f"{where} container {c['name']}"
            security = c.get("securityContext", {})
            problems += [f"{at}: no {probe}" for probe in ("livenessProbe", "readinessProbe") if probe not in c]
            problems += [
                f"{at}: no resources.{kind}.{resource}"
                for kind in ("requests", "limits")
                for resource in ("cpu", "memory")
                if resource not in c.get("resources", {}).get(kind, {})
            ]
            if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
                problems.append(f"{at}: runAsNonRoot is not true")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problems.append(f"{at}: capabilities do not drop ALL")
            if security.get("seccompProfile", pod_security.get("seccompProfile", {})).get("type") != "RuntimeDefault":
                problems.append(f"{at}: seccompProfile is not RuntimeDefault")
            if not any(m["mountPath"] == "/tmp" and m["name"] in scratch for m in c.get("volumeMounts", [])):
                problems.append(f"{at}: /tmp is not a writable emptyDir")
    return problems


def check_workloads(objects: list[Obj]) -> list[str]:
    """A PDB and a ServiceAccount for each, and time to drain before SIGKILL."""
    problems = []
    drain = float(config(objects).get("SHUTDOWN_GRACE_SECONDS", 10))
    pdbs = [o["spec"]["selector"] for o in objects if o["kind"] == "PodDisruptionBudget"]
    for workload in workloads(objects):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec, labels = spec_of(workload), workload["spec"]["template"]["metadata"]["labels"]
        if not any(selects(selector, labels) for selector in pdbs):
            problems.append(f"{where}: no PodDisruptionBudget selects its pods")
        account = spec.get("serviceAccountName")
        if not account or not find(objects, "ServiceAccount", account):
            problems.append(f"{where}: no ServiceAccount of its own ({account})")
        for c in spec["containers"]:
            command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pre_stop = float(command[1]) if command[:1] == ["sleep"] else 0.0
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace <= max(drain, 10) + pre_stop:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain}")
    return problems


def check_autoscaling(objects: list[Obj]) -> list[str]:
    """HPAs target real Deployments; embedding scales on CPU and on its queue depth."""
    problems = []
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        spec, name = hpa["spec"], hpa["metadata"]["name"]
        if not find(objects, spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"]):
            problems.append(f"HPA {name}: its target does not exist")
        if spec.get("minReplicas", 1) > spec["maxReplicas"]:
            problems.append(f"HPA {name}: minReplicas > maxReplicas")
    embedding = find(objects, "HorizontalPodAutoscaler", "embedding")
    metrics = embedding["spec"].get("metrics", []) if embedding else []
    if not any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics):
        problems.append("HPA embedding: does not scale on CPU")
    if not any(m.get(m["type"].lower(), {}).get("metric", {}).get("name") == QUEUE_DEPTH_METRIC for m in metrics):
        problems.append(f"HPA embedding: does not scale on {QUEUE_DEPTH_METRIC}")
    return problems


def check_services(objects: list[Obj]) -> list[str]:
    """Named ports, a headless Service and native gRPC probes per gRPC service; only the gateway
    is exposed beyond the cluster."""
    problems = []
    for service, port in PORTS.items():
        port_name = "http" if service == "gateway" else "grpc"
        names = [service] + ([f"{service}-headless"] if service in GRPC_SERVICES else [])
        for name in names:
            svc = find(objects, "Service", name)
            if not svc or not any(p.get("name") == port_name and p["port"] == port for p in svc["spec"]["ports"]):
                problems.append(f"Service {name}: no port {port} named {port_name}")
            elif name.endswith("-headless") and svc["spec"].get("clusterIP") != "None":
                problems.append(f"Service {name}: not headless")
        if service in GRPC_SERVICES:
            c = container(objects, service)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if c.get(probe, {}).get("grpc", {}).get("port") != port:
                    problems.append(f"{service}: {probe} is not a gRPC health probe on {port}")
    for svc in (o for o in objects if o["kind"] == "Service"):
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP" and svc["metadata"]["name"] != "gateway":
            problems.append(f"Service {svc['metadata']['name']}: type {svc['spec']['type']} exposes it")
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        backends = re.findall(r"'service': \{'name': '([^']+)'", str(ingress["spec"]))
        problems += [f"Ingress {ingress['metadata']['name']}: routes to {b}" for b in backends if b != "gateway"]
    return problems


def check_config(objects: list[Obj]) -> list[str]:
    """Peers addressed through their headless Services, every in-cluster address in this
    namespace; every Secret and ConfigMap a pod reads exists with the keys it reads."""
    problems = []
    settings = config(objects)
    for service in GRPC_SERVICES:
        headless = find(objects, "Service", f"{service}-headless")
        namespace = headless["metadata"].get("namespace") if headless else None
        want = f"dns:///{service}-headless.{namespace}.svc.cluster.local:{PORTS[service]}"
        if settings.get(f"{service.upper()}_ADDR") != want:
            problems.append(f"{service.upper()}_ADDR is {settings.get(f'{service.upper()}_ADDR')!r}, not {want!r}")
    sources = [(f"ConfigMap {o['metadata']['name']}", o["data"]) for o in objects if o["kind"] == "ConfigMap"]
    sources += [
        (f"{w['metadata']['name']} env", [e.get("value") for c in spec_of(w)["containers"] for e in c.get("env", [])])
        for w in workloads(objects)
    ]
    for where, values in sources:
        for svc, namespace in re.findall(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", str(values)):
            ours = find(objects, "Service", svc)
            if ours and ours["metadata"].get("namespace") != namespace:
                problems.append(f"{where}: {svc}.{namespace} is not where {svc} runs")
    if settings.get("BIND_HOST") != "0.0.0.0":
        problems.append("BIND_HOST is not 0.0.0.0: nothing outside the pod could connect")
    for workload in workloads(objects):
        for c in spec_of(workload)["containers"]:
            for ref in (e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e):
                if not find(objects, "ConfigMap", ref):
                    problems.append(f"{c['name']}: ConfigMap {ref} does not exist")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if not ref or ref.get("optional"):
                    continue
                secret = find(objects, "Secret", ref["name"])
                keys = {*secret.get("data", {}), *secret.get("stringData", {})} if secret else set()
                if ref["key"] not in keys:
                    problems.append(f"{c['name']}: Secret {ref['name']} has no key {ref['key']}")
    return problems


def _from_outside(peer: Obj | None) -> bool:
    """Whether an ingress peer admits traffic from beyond this namespace (None: no ``from``)."""
    return peer is None or "ipBlock" in peer or "namespaceSelector" in peer


def _is_prometheus(peer: Obj | None) -> bool:
    namespaces = (peer or {}).get("namespaceSelector", {}).get("matchLabels", {})
    return namespaces == {"kubernetes.io/metadata.name": "monitoring"} and "podSelector" in (peer or {})


def check_network_policies(objects: list[Obj]) -> list[str]:
    """Default deny; only the gateway admits traffic from outside the namespace (and Prometheus
    its scrape ports); only storage reaches PostgreSQL."""
    problems = []
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        problems.append("no default-deny NetworkPolicy for every pod, both directions")
    postgres = {name for name, labels in pods(objects).items() if labels.get(NAME) == "postgres"}
    for policy in policies:
        name, spec = policy["metadata"]["name"], policy["spec"]
        targets = selected(objects, spec["podSelector"])
        for rule in spec.get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            for peer in rule.get("from") or [None]:
                scrape = _is_prometheus(peer) and bool(ports) and ports <= SCRAPE_PORTS
                if _from_outside(peer) and not scrape and not targets <= {"gateway"}:
                    problems.append(f"NetworkPolicy {name}: admits {sorted(targets)} from outside the namespace")
                if targets & postgres and (
                    _from_outside(peer) or not selected(objects, peer["podSelector"]) <= {"storage"}
                ):
                    problems.append(f"NetworkPolicy {name}: lets {peer} reach postgres")
        for rule in spec.get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            reaches_port = not ports or bool(ports & {5432, "postgres", None})
            peers = rule.get("to") or [None]
            reaches_pod = any(_from_outside(p) or postgres & selected(objects, p["podSelector"]) for p in peers)
            if reaches_port and reaches_pod and not targets <= {"storage"}:
                problems.append(f"NetworkPolicy {name}: lets {sorted(targets - {'storage'})} reach postgres")
    return problems


def check_gpu(objects: list[Obj], *, expected: bool) -> list[str]:
    """Embedding on GPU nodes (a GPU limit, the GPU taint tolerated, a GPU node selector, cuda)."""
    embedding = find(objects, "Deployment", "embedding")
    assert embedding is not None
    spec, c = spec_of(embedding), container(objects, "embedding")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    facts = {
        "an nvidia.com/gpu limit": int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1,
        "a toleration for nvidia.com/gpu": any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])),
        "a GPU nodeSelector": any("nvidia.com/gpu" in key for key in spec.get("nodeSelector", {})),
        "EMBEDDING_DEVICE=cuda": env.get("EMBEDDING_DEVICE") == "cuda",
    }
    others = [
        w["metadata"]["name"]
        for w in workloads(objects)
        if w is not embedding and any("nvidia.com/gpu" in str(x.get("resources")) for x in spec_of(w)["containers"])
    ]
    problems = [f"embedding {'lacks' if expected else 'has'} {fact}" for fact, ok in facts.items() if ok != expected]
    return problems + [f"{name} asks for a GPU" for name in others]


def check_scale(objects: list[Obj], *, single: bool) -> list[str]:
    """dev: one replica of everything; prod: at least two of each service on the request path."""
    problems = []
    for w in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        replicas, name = w["spec"].get("replicas", 1), w["metadata"]["name"]
        if (single and replicas != 1) or (not single and name in PORTS and name != "metrics" and replicas < 2):
            problems.append(f"{w['kind']}/{name}: {replicas} replicas")
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        if single and hpa["spec"]["maxReplicas"] != 1:
            problems.append(f"HPA {hpa['metadata']['name']}: may scale past one replica")
    return problems


# Redis keys whose loss weakens a limit or drops work (see redis.yaml): their instance must not evict.
REDIS_STATE_CLIENTS = ("gateway", "chat")


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def _secret_var(c: Obj, reference: str | None) -> tuple[str, str] | None:
    """The Secret (name, key) behind ``$(VAR)``, when VAR is one of ``c``'s env from a secretKeyRef."""
    match = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", reference or "")
    refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if match and e["name"] == match[1]]
    refs = [r for r in refs if isinstance(r, dict)]
    return (refs[0]["name"], refs[0]["key"]) if refs else None


def check_redis(objects: list[Obj]) -> list[str]:
    """Every Redis requires a password from a Secret; each service's REDIS_URL names a Redis of
    this overlay and carries that password as ``$(VAR)`` of a Secret-backed variable before it
    (never a literal, never in a ConfigMap); the instance holding limits and tasks never evicts."""
    problems = []
    instances: dict[str, tuple[tuple[str, str] | None, str | None]] = {}  # Service -> (password, policy)
    for w in workloads(objects):
        c = spec_of(w)["containers"][0]
        if not c["image"].startswith("redis:"):
            continue
        args, name = c.get("args", []), w["metadata"]["name"]
        password = _secret_var(c, _arg(args, "--requirepass"))
        if password is None:
            problems.append(f"{name}: no --requirepass from a Secret")
        labels = w["spec"]["template"]["metadata"]["labels"]
        for svc in (
            o
            for o in objects
            if o["kind"] == "Service" and selects({"matchLabels": o["spec"].get("selector", {})}, labels)
        ):
            instances[svc["metadata"]["name"]] = (password, _arg(args, "--maxmemory-policy"))
    for cm in (o for o in objects if o["kind"] == "ConfigMap" and "REDIS_URL" in o.get("data", {})):
        problems.append(
            f"ConfigMap {cm['metadata']['name']}: REDIS_URL (it carries a password: Secret-backed env only)"
        )
    for service in PORTS:
        c = container(objects, service)
        [*urls] = [e for e in c.get("env", []) if e["name"] == "REDIS_URL"]
        if not urls:
            if service in REDIS_STATE_CLIENTS:
                problems.append(f"{service}: no REDIS_URL")
            continue
        url = urlparse(urls[0].get("value", ""))
        host = (url.hostname or "").split(".")[0]
        password, policy = instances.get(host, (None, None))
        if host not in instances:
            problems.append(f"{service}: REDIS_URL names {url.hostname}, no Redis of this overlay")
        elif _secret_var(c, url.password) is None or _secret_var(c, url.password) != password:
            problems.append(f"{service}: REDIS_URL's password is not $(VAR) of the Secret key {host} requires")
        else:
            names = [e["name"] for e in c["env"]]
            if names.index(url.password.strip("$()")) > names.index("REDIS_URL"):
                problems.append(
                    f"{service}: {url.password} is defined after REDIS_URL (Kubernetes would not expand it)"
                )
        if service in REDIS_STATE_CLIENTS and policy != "noeviction":
            problems.append(
                f"{service}: its Redis {host} evicts ({policy}); rate limits, backoff and tasks need noeviction"
            )
    return problems


def _llm_endpoint(objects: list[Obj]) -> tuple[str, int]:
    url = urlparse(config(objects).get("LLM_BASE_URL", ""))
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def check_chat_egress(objects: list[Obj]) -> list[str]:
    """Chat leaves the namespace only for its LLM: no rule to anywhere (0.0.0.0/0, every namespace,
    any port), and LLM_BASE_URL's port is open to its namespace (in-cluster) or an address block."""
    problems, llm_open = [], False
    host, port = _llm_endpoint(objects)
    in_cluster = re.fullmatch(r"[a-z0-9-]+\.([a-z0-9-]+)\.svc\.cluster\.local", host)
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        name, spec = policy["metadata"]["name"], policy["spec"]
        if "chat" not in selected(objects, spec["podSelector"]):
            continue
        for rule in spec.get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            for peer in rule.get("to") or [None]:
                if peer is None:
                    problems.append(f"NetworkPolicy {name}: chat may reach anywhere (a rule without 'to')")
                    continue
                if not _from_outside(peer):
                    continue
                namespaces = peer.get("namespaceSelector")
                block = peer.get("ipBlock", {}).get("cidr")
                if namespaces == {} or (block and ip_network(block, strict=False).prefixlen < 8):
                    problems.append(f"NetworkPolicy {name}: chat may reach {peer}")
                elif not ports:
                    problems.append(f"NetworkPolicy {name}: chat may leave the namespace on any port")
                dns = namespaces == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}} and ports <= {53}
                if not dns and not (
                    (in_cluster and namespaces == {"matchLabels": {"kubernetes.io/metadata.name": in_cluster[1]}})
                    or (not in_cluster and block)
                ):
                    problems.append(f"NetworkPolicy {name}: chat may reach {peer}, not its LLM {host}")
                elif not dns and port in ports:
                    llm_open = True
    if not llm_open:
        problems.append(f"chat cannot reach its LLM {host}:{port} (LLM_BASE_URL)")
    return problems


CHECKS: list[Check] = [
    check_schema,
    check_containers,
    check_workloads,
    check_autoscaling,
    check_services,
    check_config,
    check_network_policies,
    check_redis,
    check_chat_egress,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes(rendered: dict[str, list[Obj]], overlay: str, check: Check) -> None:
    assert check(rendered[overlay]) == []


def test_dev_is_one_replica_each_on_cpu(rendered: dict[str, list[Obj]]) -> None:
    assert check_scale(rendered["dev"], single=True) == []
    assert check_gpu(rendered["dev"], expected=False) == []


def test_prod_runs_embedding_on_gpus_and_replicates(rendered: dict[str, list[Obj]]) -> None:
    assert check_scale(rendered["prod"], single=False) == []
    assert check_gpu(rendered["prod"], expected=True) == []
    assert find(rendered["prod"], "Deployment", "otel-collector"), "prod sends telemetry through a collector"


def test_overlays_share_one_namespace_with_pod_security(rendered: dict[str, list[Obj]]) -> None:
    for objects in rendered.values():
        [namespace] = [o for o in objects if o["kind"] == "Namespace"]
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        assert {o["metadata"].get("namespace") for o in objects if o is not namespace} == {
            namespace["metadata"]["name"]
        }


def expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` replaced by VAR's value in ``env``, as the kubelet expands env values and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def pod_environment(objects: list[Obj], workload: str) -> dict[str, str]:
    """The environment the first container of ``workload`` starts with: its ConfigMaps, then its
    own values and Secret keys."""
    c, env = container(objects, workload), dict[str, str]()
    for source in c.get("envFrom", []):
        cm = find(objects, "ConfigMap", source.get("configMapRef", {}).get("name", ""))
        env.update(cm["data"] if cm else {})
    for var in c.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        secret = find(objects, "Secret", ref["name"]) if ref else None
        if ref is None:  # $(VAR) expands to a variable defined before, as the kubelet does
            env[var["name"]] = expand(var["value"], env)
        elif secret and ref["key"] in secret.get("stringData", {}):
            env[var["name"]] = secret["stringData"][ref["key"]]
        elif secret and ref["key"] in secret.get("data", {}):
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


@pytest.mark.parametrize("service", PORTS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_accept_their_settings(rendered: dict[str, list[Obj]], overlay: str, service: str) -> None:
    """Each service's own settings parser takes the environment the manifests give its pods (a
    misspelt choice such as EMBEDDING_DTYPE=float16 would stop the pod at start)."""
    env = pod_environment(rendered[overlay], service)
    if overlay == "prod" and "REDIS_URL" in env:  # the example REDIS_PASSWORD, expanded into it: refused
        with pytest.raises(ConfigError, match="example value"):
            CommonSettings.from_env(env)
        password = "af9ca5edfce2be46cfe065499c1b02888db424bde60212f94441735513e4a8c2"  # as from openssl rand -hex 32
        env["REDIS_URL"] = env["REDIS_URL"].replace(env["REDIS_PASSWORD"], password)
    common = CommonSettings.from_env(env)
    module = importlib.import_module(f"{service}.config")
    settings = module.Settings.from_env(env)
    if service == "gateway":
        if common.production:  # the rendered prod Secret holds the committed example: refused
            with pytest.raises(ConfigError, match="example value"):
                module.resolve_jwt_secret(settings, common)
            real = "9c2e7b41d08f5a36e1c94b7d20a8f63e5b17c9d402e86fa13b5c7e90d4a2f681"  # as from openssl rand -hex 32
            settings = module.Settings.from_env({**env, "JWT_SECRET": real})
        module.resolve_jwt_secret(settings, common)  # production refuses to start without one
    assert common.bind_host == "0.0.0.0"
    assert common.production == (overlay == "prod")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_verifies_callers_with_one_mesh_key(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """MESH_KEY comes to every service from the Secret the JWT secret comes from, the same value for
    all (a pod with another key would refuse every call); production refuses the committed example."""
    objects = rendered[overlay]
    sources = {}
    for service in PORTS:
        [ref] = [v["valueFrom"]["secretKeyRef"] for v in container(objects, service)["env"] if v["name"] == "MESH_KEY"]
        sources[service] = (ref["name"], ref["key"])
    [jwt] = [v["valueFrom"]["secretKeyRef"] for v in container(objects, "gateway")["env"] if v["name"] == "JWT_SECRET"]
    assert set(sources.values()) == {(jwt["name"], "MESH_KEY")}
    keys = {service: pod_environment(objects, service)["MESH_KEY"] for service in PORTS}
    assert len(set(keys.values())) == 1
    env = pod_environment(objects, "storage")
    common = CommonSettings.from_env(env)
    if common.production:  # the rendered prod Secret holds the example: refused, a real one taken
        with pytest.raises(ConfigError, match="example value"):
            resolve_mesh_key(env, common)
        real = "3b8f0e6a91c2d74e5f08a1b3c6d9e2f47a0b5c8d1e4f7a2b6c9d0e3f5a8b1c4d"  # as from openssl rand -hex 32
        assert resolve_mesh_key({**env, "MESH_KEY": real}, common) == real.encode()
    else:
        assert resolve_mesh_key(env, common) == keys["storage"].encode()


# ---------------------------------------------------------------- the checks can fail


def _drop_probe(objects: list[Obj]) -> None:
    del container(objects, "chat")["livenessProbe"]


def _writable_root(objects: list[Obj]) -> None:
    container(objects, "storage")["securityContext"]["readOnlyRootFilesystem"] = False


def _no_pdb(objects: list[Obj]) -> None:
    objects.remove(find(objects, "PodDisruptionBudget", "embedding") or {})


def _short_grace(objects: list[Obj]) -> None:
    gateway = find(objects, "Deployment", "gateway")
    assert gateway is not None
    spec_of(gateway)["terminationGracePeriodSeconds"] = 10


def _open_storage(objects: list[Obj]) -> None:
    policy = find(objects, "NetworkPolicy", "storage")
    assert policy is not None
    policy["spec"]["ingress"].append({"ports": [{"protocol": "TCP", "port": 50052}]})


def _chat_to_postgres(objects: list[Obj]) -> None:
    policy = find(objects, "NetworkPolicy", "chat")
    assert policy is not None
    policy["spec"]["egress"].append({"to": [{"podSelector": {"matchLabels": {NAME: "postgres"}}}]})


def _typo(objects: list[Obj]) -> None:
    container(objects, "metrics")["readinesProbe"] = container(objects, "metrics").pop("readinessProbe")


def _cluster_ip_address(objects: list[Obj]) -> None:
    cm = find(objects, "ConfigMap", "studyassist-config")
    assert cm is not None
    cm["data"]["EMBEDDING_ADDR"] = "embedding.studyassist.svc.cluster.local:50053"


def _redis_elsewhere(objects: list[Obj]) -> None:
    [url] = [e for e in container(objects, "gateway")["env"] if e["name"] == "REDIS_URL"]
    url["value"] = url["value"].replace(".studyassist.", ".default.")


def _redis_env(objects: list[Obj], workload: str) -> list[Obj]:
    redis = find(objects, "Deployment", workload)
    assert redis is not None
    env: list[Obj] = spec_of(redis)["containers"][0]["env"]
    return env


def _redis_args(objects: list[Obj], workload: str) -> list[str]:
    redis = find(objects, "Deployment", workload)
    assert redis is not None
    args: list[str] = spec_of(redis)["containers"][0]["args"]
    return args


def _redis_without_password(objects: list[Obj]) -> None:
    args = _redis_args(objects, "redis-cache")
    del args[args.index("--requirepass") : args.index("--requirepass") + 2]


def _redis_literal_password(objects: list[Obj]) -> None:
    args = _redis_args(objects, "redis-state")
    args[args.index("--requirepass") + 1] = "hunter2"


def _redis_evicts_limits(objects: list[Obj]) -> None:
    args = _redis_args(objects, "redis-state")
    args[args.index("--maxmemory-policy") + 1] = "allkeys-lru"


def _redis_url_literal(objects: list[Obj]) -> None:
    [url] = [e for e in container(objects, "chat")["env"] if e["name"] == "REDIS_URL"]
    url["value"] = url["value"].replace("$(REDIS_PASSWORD)", "dev-only-redis-password")


def _redis_url_in_configmap(objects: list[Obj]) -> None:
    cm = find(objects, "ConfigMap", "studyassist-config")
    assert cm is not None
    cm["data"]["REDIS_URL"] = "redis://redis-state.studyassist.svc.cluster.local:6379/0"


def _redis_url_before_password(objects: list[Obj]) -> None:
    env = container(objects, "embedding")["env"]
    [url] = [e for e in env if e["name"] == "REDIS_URL"]
    env.remove(url)
    env.insert(0, url)


def _chat_egress_anywhere(objects: list[Obj]) -> None:
    policy = find(objects, "NetworkPolicy", "chat-llm")
    assert policy is not None
    policy["spec"]["egress"][0]["to"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})


def _chat_egress_every_namespace(objects: list[Obj]) -> None:
    policy = find(objects, "NetworkPolicy", "chat")
    assert policy is not None
    policy["spec"]["egress"].append({"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000}]})


def _llm_moved(objects: list[Obj]) -> None:
    cm = find(objects, "ConfigMap", "studyassist-config")
    assert cm is not None
    cm["data"]["LLM_BASE_URL"] = "https://llm.example.edu:8443/v1"


def _queue_metric_renamed(objects: list[Obj]) -> None:
    hpa = find(objects, "HorizontalPodAutoscaler", "embedding")
    assert hpa is not None
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "External":
            metric["external"]["metric"]["name"] = "studyassist_embedding_queue_depth"


def _embedding_on_cpu(objects: list[Obj]) -> None:
    del container(objects, "embedding")["resources"]["limits"]["nvidia.com/gpu"]


BREAKAGES: list[tuple[Callable[[list[Obj]], None], Check, str]] = [
    (_drop_probe, check_containers, "chat: no livenessProbe"),
    (_writable_root, check_containers, "storage: readOnlyRootFilesystem is not true"),
    (_no_pdb, check_workloads, "Deployment/embedding: no PodDisruptionBudget"),
    (_short_grace, check_workloads, "Deployment/gateway: terminationGracePeriodSeconds 10"),
    (_open_storage, check_network_policies, "NetworkPolicy storage: admits ['storage'] from outside"),
    (_chat_to_postgres, check_network_policies, "NetworkPolicy chat: lets ['chat'] reach postgres"),
    (_typo, check_schema, "readinesProbe"),
    (_cluster_ip_address, check_config, "EMBEDDING_ADDR is"),
    (_redis_elsewhere, check_config, "redis-state.default is not where redis-state runs"),
    (_redis_without_password, check_redis, "redis-cache: no --requirepass from a Secret"),
    (_redis_literal_password, check_redis, "redis-state: no --requirepass from a Secret"),
    (_redis_evicts_limits, check_redis, "gateway: its Redis redis-state evicts (allkeys-lru)"),
    (_redis_url_literal, check_redis, "chat: REDIS_URL's password is not $(VAR)"),
    (_redis_url_in_configmap, check_redis, "ConfigMap studyassist-config: REDIS_URL"),
    (_redis_url_before_password, check_redis, "embedding: $(REDIS_PASSWORD) is defined after REDIS_URL"),
    (_chat_egress_anywhere, check_chat_egress, "chat may reach {'ipBlock': {'cidr': '0.0.0.0/0'}}"),
    (_chat_egress_every_namespace, check_chat_egress, "chat may reach {'namespaceSelector': {}}"),
    (_llm_moved, check_chat_egress, "chat cannot reach its LLM llm.example.edu:8443"),
    (_queue_metric_renamed, check_autoscaling, f"HPA embedding: does not scale on {QUEUE_DEPTH_METRIC}"),
    (_embedding_on_cpu, lambda objects: check_gpu(objects, expected=True), "embedding lacks an nvidia.com/gpu limit"),
]


@pytest.mark.parametrize(("breakage", "check", "expected"), BREAKAGES, ids=[b[0].__name__ for b in BREAKAGES])
def test_checks_catch_broken_manifests(
    rendered: dict[str, list[Obj]], breakage: Callable[[list[Obj]], None], check: Check, expected: str
) -> None:
    objects = copy.deepcopy(rendered["prod"])
    breakage(objects)
    assert any(expected in problem for problem in check(objects)), check(objects)


# ---------------------------------------------------------------- the renderer


def test_renderer_refuses_what_it_cannot_do(k8s_tree: Path, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [../base]\ncommonLabels: {a: b}\n")
    with pytest.raises(RenderError, match="commonLabels"):
        render(tmp_path)
    without_secrets = tmp_path / "k8s"
    shutil.copytree(k8s_tree, without_secrets, ignore=shutil.ignore_patterns("secrets.env"))
    with pytest.raises(RenderError, match=r"secrets\.env is missing"):
        render(without_secrets / "overlays" / "prod")


def _comparable(objects: Iterable[Obj]) -> dict[tuple[str, str], Obj]:
    """Objects by kind and name, Secret data decoded (kustomize wraps long base64 lines)."""
    out = {}
    for obj in objects:
        obj = copy.deepcopy(obj)
        for key, value in obj.get("data", {}).items() if obj["kind"] == "Secret" else ():
            obj["data"][key] = base64.b64decode("".join(value.split())).decode()
        out[obj["kind"], obj["metadata"]["name"]] = obj
    return out


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_kubectl_kustomize(k8s_tree: Path, rendered: dict[str, list[Obj]], overlay: str) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(k8s_tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert _comparable(rendered[overlay]) == _comparable(yaml.safe_load_all(built))


# ---------------------------------------------------------------- images


def _requirements(service: str) -> dict[str, str]:
    """Normalised distribution name -> the specifier line of services/<service>/requirements.txt."""
    lines = (REPO / "services" / service / "requirements.txt").read_text().splitlines()
    return {
        _normalise(re.split(r"[\[<>=~! ]", line, maxsplit=1)[0]): line.strip()
        for line in lines
        if line.strip() and not line.startswith("#")
    }


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("service", PORTS)
def test_dockerfile(service: str) -> None:
    dockerfiles = ["Dockerfile", "Dockerfile.cuda"] if service == "embedding" else ["Dockerfile"]
    for name in dockerfiles:
        text = (REPO / "services" / service / name).read_text()
        final_stage = text.rsplit("\nFROM ", 1)[1]
        assert "USER 10001:10001" in final_stage, f"{name}: runs as root"
        assert f'CMD ["python", "-m", "{service}"]' in final_stage
        assert "PYTHONPATH=/app/lib:/app/services" in final_stage
        assert str(PORTS[service]) in re.findall(r"^EXPOSE (.*)$", final_stage, re.M)[0].split()
        assert f"pip install -r services/{service}/requirements.txt" in text
        assert "python -m studyassist.buildprotos" in text
    if service == "embedding":
        assert _requirements("embedding")["torch"] == "torch==2.13.0"
        cpu, cuda = ((REPO / "services/embedding" / n).read_text() for n in dockerfiles)
        assert "https://download.pytorch.org/whl/cpu" in cpu and "torch==2.13.0" in cpu
        assert "ARG CUDA_IMAGE=nvidia/cuda:" in cuda and "-runtime-" in cuda and "torch==2.13.0" in cuda


def test_requirements_agree_with_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {_normalise(re.split(r"[\[<>=~! ]", d, maxsplit=1)[0]): d for d in pyproject}
    for service in PORTS:
        for name, line in _requirements(service).items():
            assert name not in declared or declared[name] == line, (
                f"{service}: {line!r} vs pyproject {declared[name]!r}"
            )


def _local_file(module: str) -> Path | None:
    for root in (REPO / "lib", REPO / "services"):
        base = root.joinpath(*module.split("."))
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
    return None


def _import_time_modules(path: Path) -> set[str]:
    """Modules a file imports when it is imported: module level, minus ``if TYPE_CHECKING:`` and
    ``try: ... except ImportError`` (optional) blocks; imports inside functions are lazy."""
    roots = [root for root in (REPO / "lib", REPO / "services") if root in path.parents]
    package = list(path.relative_to(roots[0]).parent.parts) if roots else []
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(
                    [*package[: len(package) - node.level + 1], node.module or ""]
                    if node.level
                    else [node.module or ""]
                ).strip(".")
                names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                optional = any("ImportError" in ast.unparse(h.type or ast.Pass()) for h in node.handlers)
                visit(([] if optional else node.body) + node.orelse + node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return names


def third_party_imports(service_dir: Path) -> dict[str, str]:
    """Top-level third-party modules that starting the service in ``service_dir`` imports,
    directly or through lib/, each with a file that imports it."""
    todo = [p for p in service_dir.rglob("*.py") if "node_modules" not in p.parts]
    seen, found = set(todo), dict[str, str]()
    while todo:
        path = todo.pop()
        for name in _import_time_modules(path):
            prefixes = [".".join(name.split(".")[: i + 1]) for i in range(name.count(".") + 1)]
            local = [f for f in map(_local_file, prefixes) if f]
            for f in (f for f in local if f not in seen):
                seen.add(f)
                todo.append(f)
            top = prefixes[0]
            if not local and top not in sys.stdlib_module_names:
                found.setdefault(top, path.name)
    return found


@pytest.mark.parametrize("service", PORTS)
def test_requirements_cover_imports(service: str) -> None:
    """The image installs services/<service>/requirements.txt only: everything the service
    imports at start must come from it."""
    providers = importlib.metadata.packages_distributions()
    wanted = set(_requirements(service))
    missing = {
        module: importer
        for module, importer in third_party_imports(REPO / "services" / service).items()
        if not wanted & {_normalise(d) for d in providers.get(module, [])}
    }
    assert not missing, f"add to services/{service}/requirements.txt the distributions of {missing}"


def test_import_scan_follows_lib_and_skips_lazy_imports(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from typing import TYPE_CHECKING\nimport numpy\nfrom studyassist.core import server\n"
        "if TYPE_CHECKING:\n    import torch\ntry:\n    import uvloop\nexcept ImportError:\n    pass\n"
        "def later() -> None:\n    import pandas\n"
    )
    found = third_party_imports(tmp_path)
    assert {"numpy", "grpc"} <= set(found), found  # grpc: through lib/studyassist/core/server.py
    assert not {"torch", "uvloop", "pandas", "typing"} & set(found), found


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_urls_authenticate_to_redis_started_as_rendered(
    rendered: dict[str, list[Obj]], overlay: str, tmp_path: Path
) -> None:
    """A real redis-server started with each instance's rendered args (its $(VAR)s expanded as
    the kubelet does) refuses a client without the password and answers each service's REDIS_URL."""
    objects = rendered[overlay]
    for instance, clients in {"redis-state": ("gateway", "chat"), "redis-cache": ("embedding",)}.items():
        env = pod_environment(objects, instance)
        args = [expand(a, env) for a in container(objects, instance)["args"]]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            ["redis-server", *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )
        try:
            anonymous = redis.Redis(port=port)
            for _ in range(200):  # until it listens (or has exited: the ping below then fails)
                try:
                    anonymous.ping()
                except redis.AuthenticationError:  # it listens (a ConnectionError too: caught first)
                    break
                except redis.ConnectionError:
                    if server.poll() is not None:
                        break
                    time.sleep(0.05)
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()
            for service in clients:
                url = urlparse(pod_environment(objects, service)["REDIS_URL"])
                assert url.hostname == f"{instance}.studyassist.svc.cluster.local"
                local = url._replace(netloc=f":{url.password}@127.0.0.1:{port}").geturl()
                assert redis.Redis.from_url(local).ping() is True
        finally:
            server.terminate()
            server.wait(10)
