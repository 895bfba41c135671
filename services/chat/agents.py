"""The agent registry: read from a TOML file in the repo (agents.toml) once at start."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studyassist.core.config import ConfigError
from studyassist.core.errors import InvalidArgument

from chat.extractive import STYLES


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int


@dataclass(frozen=True, slots=True)
class AgentSpec:
    agent_id: str
    name_vi: str
    name_en: str
    description_vi: str
    description_en: str
    instructions_vi: str
    instructions_en: str
    top_k: int
    sampling: Sampling
    # What the agent answers without an LLM (chat.extractive.STYLES): quotes, summary, definition,
    # questions or socratic.
    extractive: str = "quotes"

    def instructions(self, language: str) -> str:
        return self.instructions_vi if language == "vi" else self.instructions_en


class AgentRegistry:
    def __init__(self, agents: list[AgentSpec]) -> None:
        if not agents:
            raise ConfigError("the agent registry is empty")
        self.agents = agents
        self._by_id = {agent.agent_id: agent for agent in agents}
        if len(self._by_id) != len(agents):
            raise ConfigError("the agent registry has duplicate ids")

    @property
    def default(self) -> AgentSpec:
        return self.agents[0]

    def get(self, agent_id: str) -> AgentSpec:
        """The agent named ``agent_id`` ("" = the default); INVALID_ARGUMENT for an unknown one."""
        if not agent_id:
            return self.default
        agent = self._by_id.get(agent_id)
        if agent is None:
            known = ", ".join(self._by_id)
            raise InvalidArgument(f"unknown agent_id {agent_id[:64]!r}; known agents: {known}")
        return agent

    @classmethod
    def from_file(cls, path: Path) -> AgentRegistry:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the agent registry {path}: {exc}") from None
        try:
            return cls([_agent(entry) for entry in data.get("agents", [])])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid agent in {path}: {exc!r}") from None


def _agent(entry: dict[str, Any]) -> AgentSpec:
    retrieval = entry.get("retrieval", {})
    sampling = entry.get("sampling", {})
    top_k = int(retrieval.get("top_k", 6))
    extractive = str(entry.get("extractive", "quotes"))
    if extractive not in STYLES:
        raise ValueError(f"{entry['id']}: extractive must be one of {', '.join(STYLES)}")
    if not 1 <= top_k <= 50:
        raise ValueError(f"{entry['id']}: top_k must be in [1, 50]")
    return AgentSpec(
        agent_id=str(entry["id"]),
        name_vi=str(entry["name_vi"]),
        name_en=str(entry["name_en"]),
        description_vi=str(entry["description_vi"]),
        description_en=str(entry["description_en"]),
        instructions_vi=str(entry["instructions_vi"]),
        instructions_en=str(entry["instructions_en"]),
        top_k=top_k,
        sampling=Sampling(
            temperature=float(sampling.get("temperature", 0.3)),
            top_p=float(sampling.get("top_p", 0.9)),
            max_tokens=int(sampling.get("max_tokens", 512)),
        ),
        extractive=extractive,
    )
