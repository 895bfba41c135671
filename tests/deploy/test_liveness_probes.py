"""Liveness is not readiness: every gRPC service's start-up and liveness probes ask for the health
entry that only says the process serves (studyassist.core.server.LIVENESS_SERVICE), its readiness
probe for "" (what storage turns NOT_SERVING while its database is down), so a database outage
takes pods out of rotation without restarting them."""

from __future__ import annotations

import copy

import pytest
from studyassist.core.server import LIVENESS_SERVICE

from deploy.render import Obj, pod_spec
from tests.deploy.conftest import OVERLAYS

GRPC_SERVICES = ("chat", "storage", "embedding", "metrics")


def check_probe_services(objects: list[Obj]) -> list[str]:
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None or obj["metadata"]["name"] not in GRPC_SERVICES:
            continue
        for c in spec["containers"]:
            wanted = {"startupProbe": LIVENESS_SERVICE, "livenessProbe": LIVENESS_SERVICE, "readinessProbe": ""}
            for probe, service in wanted.items():
                asked = c.get(probe, {}).get("grpc", {}).get("service", "")
                if asked != service:
                    problems.append(f"{c['name']}: {probe} asks for {asked!r}, not {service!r}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_liveness_asks_for_the_process_and_readiness_for_its_dependencies(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    assert check_probe_services(rendered[overlay]) == []


def test_the_check_catches_liveness_on_readiness(rendered: dict[str, list[Obj]]) -> None:
    objects = copy.deepcopy(rendered["prod"])
    storage = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "storage")
    spec = pod_spec(storage)
    assert spec is not None
    del spec["containers"][0]["livenessProbe"]["grpc"]["service"]  # back to the plain health check
    assert check_probe_services(objects) == ["storage: livenessProbe asks for '', not 'studyassist.liveness'"]
