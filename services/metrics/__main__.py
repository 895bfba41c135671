from studyassist.core.bootstrap import run_service

from metrics.config import Settings
from metrics.server import build

run_service("metrics", Settings.from_env, build, metrics_addr=lambda s: s.metrics_addr)
