"""The response cache: whole answers keyed so that an upload or a delete misses.

The key holds the user, the agent, the normalised question, the chosen files, the user's
document-set version (changes on every upload and delete) and the backend (an answer written in
extractive mode is not served once an LLM is connected).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

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
    def __init__(self, cache: TwoLayerCache) -> None:
        self.cache = cache

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
