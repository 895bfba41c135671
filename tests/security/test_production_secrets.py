"""Production refuses the secrets committed in deploy/ and guessable ones (issue 18, "Accounts" and
"Smaller defects"): one check (studyassist.core.secrets) behind the gateway's JWT_SECRET, every
service's MESH_KEY, and the in-cluster Redis password, which reaches the services inside REDIS_URL.
The JWT secret's own test, through the gateway's settings, is in test_accounts.py.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from urllib.parse import quote

import pytest
from studyassist.core.config import CommonSettings, ConfigError
from studyassist.core.identity import resolve_mesh_key
from studyassist.core.secrets import EXAMPLE_SECRETS, entropy_bits, redis_url_password

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAMES = ("JWT_SECRET", "MESH_KEY", "REDIS_PASSWORD")
GUESSABLE = ("a" * 64, "ab" * 32, "password" * 5, "0123456789" * 4)


def committed_examples(name: str) -> set[str]:
    """Every value of ``name`` written in deploy/ (``NAME: value`` in YAML, ``NAME=value`` in .env)."""
    found: set[str] = set()
    pattern = re.compile(rf"^\s*{name}\s*[:=]\s*['\"]?([^\s'\"{{}}]+)", re.MULTILINE)
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".yml", ".example", ".env"}:
            found.update(match.group(1) for match in pattern.finditer(path.read_text()))
    return found


def production(tmp_path: Path, **env: str) -> CommonSettings:
    return CommonSettings.from_env({"ENVIRONMENT": "production", "DATA_DIR": str(tmp_path), **env})


def development(tmp_path: Path, **env: str) -> CommonSettings:
    return CommonSettings.from_env({"DATA_DIR": str(tmp_path), **env})


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_every_committed_example_is_on_the_refused_list(name: str) -> None:
    """A placeholder added to deploy/ later must be added to EXAMPLE_SECRETS too, or this fails."""
    examples = committed_examples(name)
    # The dev overlay's Secret and the prod overlay's secrets.env.example each hold one.
    assert len(examples) >= 2, examples
    assert examples <= EXAMPLE_SECRETS, examples - EXAMPLE_SECRETS


def test_production_refuses_the_example_and_guessable_mesh_keys(tmp_path: Path) -> None:
    examples = committed_examples("MESH_KEY")
    for key in examples:
        with pytest.raises(ConfigError, match="MESH_KEY is an example value"):
            resolve_mesh_key({"MESH_KEY": key}, production(tmp_path))
        assert resolve_mesh_key({"MESH_KEY": key}, development(tmp_path)) == key.encode()  # the dev overlay
    for guessable in GUESSABLE:
        assert entropy_bits(guessable) < 128
        with pytest.raises(ConfigError, match="MESH_KEY looks guessable"):
            resolve_mesh_key({"MESH_KEY": guessable}, production(tmp_path))
        assert resolve_mesh_key({"MESH_KEY": guessable}, development(tmp_path)) == guessable.encode()
    for good in (secrets.token_hex(32), secrets.token_urlsafe(48)):
        assert resolve_mesh_key({"MESH_KEY": good}, production(tmp_path)) == good.encode()


def test_production_refuses_the_example_redis_password_in_redis_url(tmp_path: Path) -> None:
    """The manifests write $(REDIS_PASSWORD) into REDIS_URL; with a committed example there every
    service refuses to start in production, in each form redis-py reads a password from."""
    examples = committed_examples("REDIS_PASSWORD")
    assert examples
    for password in examples:
        for url in (
            f"redis://:{password}@redis-state.studyassist.svc.cluster.local:6379/0",  # as the manifests write it
            f"rediss://default:{quote(password, safe='')}@redis.example.edu:6380/1",
            f"unix:///run/redis.sock?db=0&password={password}",
        ):
            assert redis_url_password(url) == password
            with pytest.raises(ConfigError, match=r"REDIS_URL \(REDIS_PASSWORD\) is an example value"):
                production(tmp_path, REDIS_URL=url)
            assert development(tmp_path, REDIS_URL=url).redis_url == url  # the dev overlay keeps working
    # A password of the operator's, or none (a Redis on this host), is theirs to choose.
    for url in (
        f"redis://:{secrets.token_hex(32)}@redis-state.studyassist.svc.cluster.local:6379/0",
        "redis://:short@redis.internal:6379/0",
        "redis://127.0.0.1:6379/0",
        "",
    ):
        assert production(tmp_path, REDIS_URL=url).redis_url == url
