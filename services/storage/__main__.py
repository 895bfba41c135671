from studyassist.core.bootstrap import run_service

from storage.config import Settings
from storage.server import build

run_service("storage", Settings.from_env, build, metrics_addr=lambda s: s.metrics_addr)
