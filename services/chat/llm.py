"""The LLM behind an OpenAI-compatible API, probed in the background so availability is known
before a request arrives and an LLM that comes up later is used without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from chat.agents import Sampling

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.5


@dataclass(slots=True)
class StreamUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LlmUnavailable(Exception):
    """The LLM could not be reached (or failed before producing any text)."""


class LlmBackend:
    def __init__(self, base_url: str, model: str, api_key: str, timeout_s: float, probe_interval_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.configured_model = model
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        # Retries belong to the probe loop; a user request must fail over to extractive mode at once.
        self.client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key,
            timeout=timeout_s,
            max_retries=0,
        )
        self.model = model
        self.available = False
        self.last_probe_at = 0.0
        self.last_error = "not probed yet"
        self._probe_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[bool], None]] = []

    def on_availability_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(available)`` each time the LLM comes up or goes away."""
        self._listeners.append(listener)

    @property
    def model_backend_name(self) -> str:
        return f"llm:{self.model}"

    @property
    def backend_name(self) -> str:
        """What would answer a question asked now."""
        return self.model_backend_name if self.available else "extractive"

    async def probe(self) -> bool:
        """GET {base}/models with a short timeout; picks the model when none is configured."""
        try:
            page = await self.client.models.list(timeout=PROBE_TIMEOUT_S)
            ids = [m.id for m in page.data]
        except Exception as exc:  # any failure to list models means "not usable now"
            self._set(False, f"{type(exc).__name__}: {exc}")
            return False
        if self.configured_model:
            self.model = self.configured_model
        elif ids:
            self.model = ids[0]
        else:
            self._set(False, "the LLM server lists no models")
            return False
        self._set(True, "")
        return True

    def _set(self, available: bool, error: str) -> None:
        # Logged at start and on every change, so the log says which backend answers.
        if available != self.available or not self.last_probe_at:
            log.info(
                "llm %s", "available" if available else "unavailable",
                extra={"fields": {"base_url": self.base_url, "model": self.model, "error": error}},
            )  # fmt: skip
        changed = available != self.available
        self.available = available
        self.last_error = error
        self.last_probe_at = time.time()
        if changed:
            for listener in self._listeners:
                listener(available)

    def mark_failed(self, error: str) -> None:
        """A request could not reach the LLM: use extractive mode until the next probe succeeds."""
        self._set(False, error)

    def start(self) -> None:
        self._probe_task = asyncio.create_task(self._probe_loop(), name="llm-probe")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            with contextlib.suppress(Exception):
                await self.probe()

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self.client.close()

    @contextlib.contextmanager
    def _reaching_server(self) -> Iterator[None]:
        """Turns the SDK's errors into LlmUnavailable; an unreachable server also switches to extractive mode."""
        try:
            yield
        except (openai.APIConnectionError, openai.APITimeoutError, openai.NotFoundError) as exc:
            self.mark_failed(f"{type(exc).__name__}: {exc}")
            raise LlmUnavailable(str(exc)) from exc
        except openai.APIStatusError as exc:
            raise LlmUnavailable(f"LLM server answered {exc.status_code}: {exc.message}") from exc

    async def open_stream(
        self, messages: list[ChatCompletionMessageParam], sampling: Sampling, timeout_s: float
    ) -> LlmStream:
        """Start one streamed chat completion (the server has accepted it when this returns).

        Raises LlmUnavailable when the server cannot be reached or refuses the request.
        """
        with self._reaching_server():
            stream = await self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout_s,
            )
        return LlmStream(stream)

    async def complete(
        self, messages: list[ChatCompletionMessageParam], sampling: Sampling, timeout_s: float
    ) -> tuple[str, StreamUsage]:
        """One whole (non-streamed) completion: the unary Chat RPC uses it."""
        with self._reaching_server():
            result = await self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                timeout=timeout_s,
            )
        usage = StreamUsage()
        if result.usage is not None:
            usage = StreamUsage(result.usage.prompt_tokens or 0, result.usage.completion_tokens or 0)
        text = (result.choices[0].message.content or "") if result.choices else ""
        return text, usage


class LlmStream:
    """Text deltas of one streamed completion, and its usage once the server reports it.

    ``close()`` (always called by the servicer in ``finally``) closes the HTTP response: when the
    caller went away, the connection to the LLM server closes at once, so it stops generating.
    """

    def __init__(self, stream: AsyncStream[ChatCompletionChunk]) -> None:
        self._stream = stream
        self.usage = StreamUsage()

    async def deltas(self) -> AsyncIterator[str]:
        try:
            async for chunk in self._stream:
                if chunk.usage is not None:
                    self.usage = StreamUsage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                for choice in chunk.choices:
                    text = choice.delta.content if choice.delta else None
                    if text:
                        yield text
        except Exception as exc:  # the SDK lets transport errors through raw mid-stream
            raise LlmUnavailable(f"the LLM stream broke: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._stream.close()
