"""The response cache: whole answers keyed so that an upload or a delete misses.

The key holds the user, the agent, the normalised question, the chosen files, the user's
document-set version (changes on every upload and delete) and the backend (an answer written in
extractive mode is not served once an LLM is connected).

Metrics: ``chat.cache.hits`` and ``chat.cache.misses`` per ``layer`` (local, and redis when Redis is
configured), named like the embedding service's cache counters, so the metrics service's dashboard
shows ``chat.cache.hit_ratio`` per layer. A lookup that misses locally and then asks Redis counts
once in each layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from opentelemetry import metrics
from studyassist.chat.v1 import chat_pb2
from studyassist.core.cache import TwoLayerCache

from chat.text import normalise_question


def cache_key(
    user_id: str, agent_id: str, question: str, file_ids: Sequence[str], docset_version: str, backend: str
) -> str:
    parts = [user_id, agent_id, normalise_question(question), sorted(file_ids), docset_version, backend]
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()
    # The user id stays readable in the key so one user's entries can be found (and dropped) together.
    return f"{user_id}:{digest}"


class ResponseCache:
    def __init__(self, cache: TwoLayerCache, *, meter: metrics.Meter | None = None) -> None:
        self.cache = cache
        cache.export_counters(meter or metrics.NoOpMeter("chat.cache"), "chat.cache")

    async def get(self, key: str) -> chat_pb2.ChatResponse | None:
        raw = await self.cache.get(key)
        if raw is None:
            return None
        response = chat_pb2.ChatResponse()
        try:
            response.ParseFromString(raw)
        except Exception:
            return None
        return response

    async def put(self, key: str, response: chat_pb2.ChatResponse) -> None:
        # Only what is the same for every asker of the question: no session or message ids.
        stored = chat_pb2.ChatResponse(
            answer=response.answer, citations=response.citations, backend=response.backend, usage=response.usage
        )
        await self.cache.set(key, stored.SerializeToString())
