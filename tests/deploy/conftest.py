"""The Kubernetes manifests rendered once per module, for every test under tests/deploy."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from deploy.render import Obj, render  # noqa: E402

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")


@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s whose prod secrets.env is the committed example, never a real one."""
    tree = tmp_path_factory.mktemp("deploy") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    prod = tree / "overlays" / "prod"
    shutil.copy(prod / "secrets.env.example", prod / "secrets.env")
    return tree


@pytest.fixture(scope="module")
def rendered(k8s_tree: Path) -> dict[str, list[Obj]]:
    return {overlay: render(k8s_tree / "overlays" / overlay) for overlay in OVERLAYS}
