"""What production asks of a configured secret: never a value committed in this repository, never a
guessable one; the one check behind the gateway's JWT_SECRET, every service's MESH_KEY and the
password inside REDIS_URL.

Kept apart from :mod:`studyassist.core.config` (which calls it for REDIS_URL) so that the list of
committed values and the entropy estimate live in one place; tests/security checks that every value
deploy/ commits for these variables is listed here.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from urllib.parse import parse_qs, unquote, urlparse

from studyassist.core.config import ConfigError

# HS256 keys shorter than the hash output weaken the MAC; refuse them (JWT_SECRET, MESH_KEY).
MIN_SECRET_BYTES = 32
# Production's least estimated entropy of a key: `openssl rand -hex 32` gives ~256 bits by this
# estimate, a repeated or dictionary-like phrase far less.
MIN_SECRET_ENTROPY_BITS = 128
# The example values committed in deploy/k8s (the dev overlay's Secret, the prod overlay's
# secrets.env.example) for JWT_SECRET, MESH_KEY and REDIS_PASSWORD: anyone can read them, so production
# refuses each of them for any of these settings.
EXAMPLE_SECRETS = frozenset(
    {
        # JWT_SECRET
        "replace-with-output-of-openssl-rand-hex-32",
        "dev-only-not-a-secret-change-me-0123456789abcdef",
        # MESH_KEY
        "replace-with-another-output-of-openssl-rand-hex-32",
        "dev-only-mesh-key-not-a-secret-change-me-0123456789",
        # REDIS_PASSWORD
        "replace-with-a-third-output-of-openssl-rand-hex-32",
        "dev-only-redis-password-0123456789abcdef",
    }
)
RANDOM_HINT = "set a random one (openssl rand -hex 32)"


def entropy_bits(secret: str) -> float:
    """An upper estimate of the secret's entropy: the smaller of its length times the Shannon
    entropy of its characters' frequencies (small alphabets score low: 64 "a"s 0 bits, "abab..." 1
    bit a character) and the size of its zlib compression (repetition scores low: "0123456789" four
    times). A random key scores about its true entropy by both."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    # zlib's header and checksum are 6 bytes of any compression.
    compressed = 8.0 * max(0, len(zlib.compress(secret.encode(), 9)) - 6)
    return min(per_char * len(secret), compressed)


def require_key_length(name: str, value: str) -> None:
    """ConfigError when the key ``name`` is shorter than MIN_SECRET_BYTES (in any environment)."""
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes")


def refuse_example(name: str, value: str) -> None:
    """ConfigError when ``value`` is one of the examples committed in deploy/."""
    if value in EXAMPLE_SECRETS:
        raise ConfigError(f"{name} is an example value committed in deploy/; {RANDOM_HINT}")


def check_production_key(name: str, value: str) -> None:
    """Production's check of a signing key (JWT_SECRET, MESH_KEY): not a committed example, and
    at least MIN_SECRET_ENTROPY_BITS by :func:`entropy_bits`."""
    refuse_example(name, value)
    bits = entropy_bits(value)
    if bits < MIN_SECRET_ENTROPY_BITS:
        raise ConfigError(
            f"{name} looks guessable (about {bits:.0f} bits, at least {MIN_SECRET_ENTROPY_BITS} needed); {RANDOM_HINT}"
        )


def redis_url_password(url: str) -> str:
    """The password a Redis URL carries, as redis-py reads it: ``redis://[user]:PASSWORD@host`` or a
    ``?password=`` query (the only way a ``unix://`` URL carries one); "" when it has none."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query).get("password")
    if query:
        return query[0]
    return unquote(parsed.password or "")


def check_production_redis_url(url: str) -> None:
    """Production refuses a REDIS_URL holding the REDIS_PASSWORD example committed in deploy/.

    Checked here, in the URL, and nowhere else: no service reads REDIS_PASSWORD itself; Kubernetes
    writes it into REDIS_URL ($(REDIS_PASSWORD) in deploy/k8s/components/redis), so the URL is where
    the value reaches the project's code (the Redis pods take it as --requirepass, redis-server's own
    argument). Only the committed examples are refused, not a low-entropy password: REDIS_URL may
    name a Redis the project does not run (a managed one whose provider sets the password) or one
    that needs none (on 127.0.0.1), which are not ours to refuse; the password the manifests create
    comes from the operator's Secret, which the example tells them to fill from openssl rand."""
    refuse_example("the password in REDIS_URL (REDIS_PASSWORD)", redis_url_password(url))
