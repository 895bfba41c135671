from studyassist.core.bootstrap import run_service

from embedding.config import Settings
from embedding.server import build

run_service("embedding", Settings.from_env, build, metrics_addr=lambda s: s.metrics_addr)
