"""A real OpenAI-compatible server for chat tests and benchmarks: `transformers serve` on a tiny
randomly initialised causal LM built on disk (nothing downloaded), and a TCP relay in front of it
that records who closes each connection, the requests that pass and when each token went by."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def build_tiny_llm(directory: Path) -> None:
    """A randomly initialised 2-layer Llama with a byte-level BPE tokenizer and a chat template.

    Everything is built offline: the tokenizer is trained on a few sentences, so any text
    (Vietnamese included) tokenises; the weights are random, so the output is gibberish.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["the stack is a last in first out structure", "xin chào, ngăn xếp và hàng đợi", "queue tree graph"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=fast.bos_token_id,
        # No reachable end token: every answer runs to max_tokens, so streams last predictably.
        eos_token_id=len(fast) + 10,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LlmServer:
    process: subprocess.Popen[bytes]
    port: int
    model: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def start_llm_server(model_dir: Path, log_path: Path) -> LlmServer:
    port = free_port()
    executable = Path(sys.executable).parent / "transformers"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(executable), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                models = json.load(response)["data"]
                return LlmServer(process, port, models[0]["id"])
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("transformers serve did not start:\n" + log_path.read_text()[-3000:]) from None
            time.sleep(0.3)


@dataclass
class RelayedConnection:
    opened_at: float
    # When the last chat-completion request went through it (0: none did).
    completion_at: float = 0.0
    closed_at: float = 0.0
    # "client" when the chat service closed it, "server" when the LLM server did.
    closed_by: str = ""
    # Bodies of the chat-completion requests sent through it (JSON), when the relay records them.
    request_bodies: list[bytes] = field(default_factory=list)
    # When each non-empty content delta of a streamed answer came from the server, in order.
    token_times: list[float] = field(default_factory=list)


@dataclass
class Relay:
    """A TCP relay to the LLM server that records who closes each connection and when.

    ``enabled=False`` makes it drop new connections at once (an LLM that is down). With
    ``record=True`` it also keeps request bodies and the arrival time of every streamed token.
    """

    target_port: int
    port: int = 0
    enabled: bool = True
    record: bool = False
    connections: list[RelayedConnection] = field(default_factory=list)
    _listener: socket.socket | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True).start()

    def completions_since(self, moment: float) -> list[RelayedConnection]:
        return [c for c in self.connections if c.completion_at >= moment]

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.enabled:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        # Forward each piece at once, as the endpoints on both sides do (asyncio sets TCP_NODELAY):
        # with Nagle's algorithm a small write made while the previous one awaits a delayed ACK can
        # wait up to 40 ms here, which the benchmark would charge to chat.
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        record = RelayedConnection(time.monotonic())
        self.connections.append(record)
        requests = b""
        events = b""
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 30)
                if client in readable:
                    data = _recv_or_empty(client)
                    if not data:
                        # The chat service closed its side (a FIN, or a RST when it aborted with
                        # unread bytes pending): close the LLM side too.
                        record.closed_by = "client"
                        return
                    if b"/chat/completions" in data:
                        record.completion_at = time.monotonic()
                    upstream.sendall(data)
                    if self.record:
                        requests = _take_bodies(requests + data, record.request_bodies)
                if upstream in readable:
                    data = _recv_or_empty(upstream)
                    now = time.monotonic()
                    if not data:
                        record.closed_by = "server"
                        return
                    try:
                        client.sendall(data)
                    except OSError:
                        record.closed_by = "client"  # the chat service went away mid-answer
                        return
                    if self.record:
                        events = _take_tokens(events + data, now, record.token_times)
        except OSError:
            record.closed_by = record.closed_by or "error"
            return
        finally:
            record.closed_at = time.monotonic()
            client.close()
            upstream.close()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()


def _recv_or_empty(sock: socket.socket) -> bytes:
    """What the peer sent; b"" once it has closed, whether by FIN or by reset."""
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _take_bodies(buffer: bytes, bodies: list[bytes]) -> bytes:
    """Bodies of complete chat-completion requests in ``buffer`` into ``bodies``; returns the rest."""
    while True:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if not sep:
            return buffer
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(rest) < length:
            return buffer
        if b"/chat/completions" in head.split(b"\r\n", 1)[0]:
            bodies.append(rest[:length])
        buffer = rest[length:]


def _take_tokens(buffer: bytes, now: float, times: list[float]) -> bytes:
    """Record ``now`` for each complete SSE event in ``buffer`` that carries non-empty content."""
    while b"\n\n" in buffer:
        event, _, buffer = buffer.partition(b"\n\n")
        for line in event.split(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue  # HTTP chunked-encoding framing around the event; not a token
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                times.append(now)
    return buffer
