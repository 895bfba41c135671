"""``python -m chat``: the chat service."""

from studyassist.core.bootstrap import run_service

from chat.config import Settings
from chat.server import build

if __name__ == "__main__":
    run_service("chat", Settings.from_env, build, metrics_addr=lambda s: s.metrics_addr)
