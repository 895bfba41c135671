"""Telemetry overhead: a gRPC server built with create_server, telemetry off vs on, same run.

Modes, interleaved round by round so drift on a shared machine hits them alike:
- off: no-op meter and tracer (the interceptor still runs; nothing is recorded);
- sdk: the OTel SDK records histograms and spans, nothing is exported (endpoint None);
- exporting: setup_telemetry to a live metrics service (``python -m metrics``, its own process),
  metrics every second, spans in 1 s batches — what every service does in production;
- sampled: exporting, keeping 10 % of traces (metrics complete);
- dead: exporting to an address where nothing listens (the metrics service is down).
Clients run ``--concurrency`` unary calls in flight on one channel in the same process.

    python -m bench.telemetry_bench            # 9 rounds of 2 s per mode
    python -m bench.telemetry_bench --quick    # 3 rounds of 1 s per mode
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc
import uvloop
from opentelemetry import metrics, trace
from studyassist.core.channels import create_channel
from studyassist.core.telemetry import Telemetry, setup_telemetry
from studyassist.core.testing import StandInServicer, spawn_service, stand_in_server
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc


class Echo(StandInServicer):
    """Answers at once: the server and its interceptor are all that is measured."""

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        return embedding_pb2.EmbedResponse(model_id="echo", dimension=len(request.texts))


async def throughput(
    meter: metrics.Meter, tracer: trace.Tracer, seconds: float, concurrency: int
) -> tuple[float, float]:
    """(calls per second, CPU microseconds of this process per call: clients, server, exporter threads)."""
    server, port = stand_in_server(Echo(), meter=meter, tracer=tracer)
    await server.start()
    try:
        async with create_channel(f"127.0.0.1:{port}") as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            request = embedding_pb2.EmbedRequest(texts=[b"x"])
            for _ in range(50):  # warm-up, not counted
                await stub.Embed(request, timeout=5)
            done = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await stub.Embed(request, timeout=5)
                    done += 1

            started, cpu_started = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            return done / elapsed, cpu / done * 1e6
    finally:
        await server.stop(grace=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    rounds, seconds = (3, 1.0) if args.quick else (9, 2.0)

    metrics_service = spawn_service("metrics", {"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0"})
    sdk = setup_telemetry("bench-sdk", None)
    exporting = setup_telemetry("bench", metrics_service.address, export_interval_s=1.0)
    sampled = setup_telemetry("bench", metrics_service.address, export_interval_s=1.0, trace_sample_ratio=0.1)
    dead = setup_telemetry("bench-dead", "127.0.0.1:9", export_interval_s=1.0)
    modes: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {
        "off": lambda: throughput(metrics.NoOpMeter("off"), trace.NoOpTracer(), seconds, args.concurrency),
        "sdk": lambda: throughput(sdk.meter, sdk.tracer, seconds, args.concurrency),
        "exporting": lambda: throughput(exporting.meter, exporting.tracer, seconds, args.concurrency),
        "sampled": lambda: throughput(sampled.meter, sampled.tracer, seconds, args.concurrency),
        "dead": lambda: throughput(dead.meter, dead.tracer, seconds, args.concurrency),
    }
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}

    async def run_all() -> None:
        for _ in range(rounds):
            for mode, run in modes.items():
                results[mode].append(await run())

    try:
        uvloop.run(run_all())
    finally:
        telemetries: list[Telemetry] = [sdk, exporting, sampled, dead]
        for telemetry in telemetries:
            telemetry.shutdown()
        metrics_service.stop()

    # Wall-clock throughput swings with whatever else the machine runs; CPU per call much less so.
    base_rate = statistics.median(rate for rate, _ in results["off"])
    base_cpu = statistics.median(cpu for _, cpu in results["off"])
    print(
        f"unary calls through create_server, {args.concurrency} in flight, client in the same process, "
        f"median of {rounds} interleaved rounds x {seconds:g} s"
    )
    print(f"  {'mode':<10} {'calls/s':>8} {'vs off':>8}   {'CPU us/call':>11} {'vs off':>8}")
    for mode, values in results.items():
        rate = statistics.median(r for r, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(
            f"  {mode:<10} {rate:8.0f} {(rate / base_rate - 1) * 100:+7.1f} %   "
            f"{cpu:11.0f} {(cpu / base_cpu - 1) * 100:+7.1f} %"
        )


if __name__ == "__main__":
    main()
