"""The LLM behind an OpenAI-compatible API, probed in the background so availability is known
before a request arrives and an LLM that comes up later is used without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from opentelemetry import propagate, trace
from studyassist.core.errors import DeadlineExceeded

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
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        timeout_s: float,
        probe_interval_s: float,
        *,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parsed = urlsplit(self.base_url)
        self._server_address = parsed.hostname or ""
        try:
            port = parsed.port
        except ValueError:
            port = None
        self._server_port = port or (443 if parsed.scheme == "https" else 80)
        self.tracer = tracer or trace.get_tracer(__name__)
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

    def _limit(self, deadline_s: float | None) -> tuple[float, bool]:
        """The time one request may take, and whether the caller's deadline (not LLM_TIMEOUT_S) set it."""
        if deadline_s is None or deadline_s >= self.timeout_s:
            return self.timeout_s, False
        return max(deadline_s, 0.001), True

    def _start_span(self, sampling: Sampling, streamed: bool) -> tuple[trace.Span, dict[str, str]]:
        """The CLIENT span of one request, and the headers that carry its context to the LLM server."""
        span = self.tracer.start_span(
            f"chat {self.model}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",  # the API spoken; the server may be anything compatible
                "gen_ai.request.model": self.model,
                "gen_ai.request.stream": streamed,
                "gen_ai.request.max_tokens": sampling.max_tokens,
                "gen_ai.request.temperature": sampling.temperature,
                "gen_ai.request.top_p": sampling.top_p,
                "server.address": self._server_address,
                "server.port": self._server_port,
            },
        )
        headers: dict[str, str] = {}
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return span, headers

    def _failure(self, exc: BaseException, caller_bound: bool, *, mid_stream: bool = False) -> BaseException:
        """What a failed request raises: DeadlineExceeded when the caller's own deadline ran out (the
        LLM is not to blame and stays in use), else LlmUnavailable. Only a server that cannot be
        reached (or lacks the model) switches everyone to extractive mode until the next probe; a
        slow answer, a refused request or a broken stream affect this request alone."""
        timed_out = isinstance(exc, (TimeoutError, openai.APITimeoutError)) or _is_timeout(exc)
        if timed_out and caller_bound:
            return DeadlineExceeded("the chat request ran out of time waiting for the language model")
        if timed_out and not _is_connect_timeout(exc):
            return LlmUnavailable(f"the LLM did not answer within LLM_TIMEOUT_S={self.timeout_s:g}s")
        if mid_stream:
            return LlmUnavailable(f"the LLM stream broke: {type(exc).__name__}: {exc}")
        if isinstance(exc, (openai.APIConnectionError, openai.NotFoundError)):  # a connect timeout included
            self.mark_failed(f"{type(exc).__name__}: {exc}")
            return LlmUnavailable(str(exc) or type(exc).__name__)
        if isinstance(exc, openai.APIStatusError):
            return LlmUnavailable(f"LLM server answered {exc.status_code}: {exc.message}")
        return exc

    @contextlib.contextmanager
    def _request(self, span: trace.Span, caller_bound: bool) -> Iterator[None]:
        """Turns the SDK's errors into ours (see ``_failure``) and ends ``span`` on failure."""
        try:
            yield
        except BaseException as exc:
            error = self._failure(exc, caller_bound)
            _end_failed(span, exc, error)
            if error is exc:
                raise
            raise error from exc

    async def open_stream(
        self, messages: list[ChatCompletionMessageParam], sampling: Sampling, deadline_s: float | None
    ) -> LlmStream:
        """Start one streamed chat completion (the server has accepted it when this returns).

        ``deadline_s``: seconds left of the caller's deadline (None: none); the request, the stream
        included, gets at most that and at most LLM_TIMEOUT_S. Raises DeadlineExceeded when the
        caller's deadline runs out, LlmUnavailable when the server cannot be reached, refuses the
        request or does not answer within LLM_TIMEOUT_S.
        """
        limit, caller_bound = self._limit(deadline_s)
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + limit
        started = time.perf_counter()
        span, headers = self._start_span(sampling, streamed=True)
        with self._request(span, caller_bound):
            async with asyncio.timeout_at(deadline_at):
                stream = await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=limit,
                    extra_headers=headers,
                )
        return LlmStream(self, stream, span, started, deadline_at, caller_bound)

    async def complete(
        self, messages: list[ChatCompletionMessageParam], sampling: Sampling, deadline_s: float | None
    ) -> tuple[str, StreamUsage]:
        """One whole (non-streamed) completion: the unary Chat RPC uses it. Limits and errors as
        ``open_stream``."""
        limit, caller_bound = self._limit(deadline_s)
        span, headers = self._start_span(sampling, streamed=False)
        with self._request(span, caller_bound):
            async with asyncio.timeout(limit):
                result = await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    timeout=limit,
                    extra_headers=headers,
                )
        usage = StreamUsage()
        if result.usage is not None:
            usage = StreamUsage(result.usage.prompt_tokens or 0, result.usage.completion_tokens or 0)
        _end_succeeded(span, usage, result.model)
        text = (result.choices[0].message.content or "") if result.choices else ""
        return text, usage


class LlmStream:
    """Text deltas of one streamed completion, and its usage once the server reports it.

    ``close()`` (always called by the servicer in ``finally``) closes the HTTP response: when the
    caller went away, the connection to the LLM server closes at once, so it stops generating.
    It also ends the request's span.
    """

    def __init__(
        self,
        backend: LlmBackend,
        stream: AsyncStream[ChatCompletionChunk],
        span: trace.Span,
        started: float,
        deadline_at: float,
        caller_bound: bool,
    ) -> None:
        self._backend = backend
        self._stream = stream
        self._span = span
        self._started = started
        self._deadline_at = deadline_at
        self._caller_bound = caller_bound
        self._failed = False
        self._response_model = ""
        self.usage = StreamUsage()
        # perf_counter() of the first and the last text delta (0: none yet).
        self.first_token_at = 0.0
        self.last_token_at = 0.0

    async def deltas(self) -> AsyncIterator[str]:
        """The text as it comes. Raises DeadlineExceeded or LlmUnavailable (see ``open_stream``)."""
        chunks = aiter(self._stream)
        while True:
            try:
                # Only the wait for the next chunk is timed: no timeout may span a yield.
                async with asyncio.timeout_at(self._deadline_at):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                self._span.add_event("cancelled")  # the caller went away
                raise
            except Exception as exc:  # the SDK lets transport errors through raw mid-stream
                error = self._backend._failure(exc, self._caller_bound, mid_stream=True)
                self._failed = True
                _mark_failed(self._span, exc, error)
                raise error from exc
            if chunk.usage is not None:
                self.usage = StreamUsage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
            self._response_model = self._response_model or chunk.model or ""
            for choice in chunk.choices:
                text = choice.delta.content if choice.delta else None
                if text:
                    self.last_token_at = time.perf_counter()
                    if not self.first_token_at:
                        self.first_token_at = self.last_token_at
                    yield text

    def tokens_per_second(self, completion_tokens: int) -> float | None:
        """Generation speed after the first token (decode rate); None when it cannot be told."""
        elapsed = self.last_token_at - self.first_token_at
        if completion_tokens < 2 or elapsed <= 0:
            return None
        return (completion_tokens - 1) / elapsed

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            if self.first_token_at:
                self._span.set_attribute("gen_ai.response.time_to_first_chunk", self.first_token_at - self._started)
            if self._failed:
                self._span.end()
            else:
                _end_succeeded(self._span, self.usage, self._response_model)


def _is_timeout(exc: BaseException) -> bool:
    # httpx's (or httpx2's) own timeouts, which the SDK lets through raw mid-stream.
    return any(cls.__name__ == "TimeoutException" for cls in type(exc).__mro__)


def _is_connect_timeout(exc: BaseException) -> bool:
    """A timeout while connecting: the server is not there (as opposed to slow to answer). Not a
    wait for a free connection of our own pool (PoolTimeout): that is load here, not the server."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ == "ConnectTimeout":
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _mark_failed(span: trace.Span, exc: BaseException, error: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        span.add_event("cancelled")  # the caller went away: not the LLM's failure
        return
    span.set_attribute("error.type", type(error).__name__)
    span.record_exception(exc)
    span.set_status(trace.StatusCode.ERROR, str(error))


def _end_failed(span: trace.Span, exc: BaseException, error: BaseException) -> None:
    _mark_failed(span, exc, error)
    span.end()


def _end_succeeded(span: trace.Span, usage: StreamUsage, response_model: str) -> None:
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    # Token counts only when the server reported them (0 = not reported).
    if usage.prompt_tokens:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    if usage.completion_tokens:
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    span.end()
