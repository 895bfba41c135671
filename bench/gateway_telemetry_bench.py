"""Gateway telemetry overhead: the read endpoint (GET /v1/sessions) with telemetry off vs exporting, same run.

Four gateway processes in front of one in-memory storage backend (the gateway tests' servicer, so
the gateway is what is measured):
- "disabled", the baseline: the OpenTelemetry SDK switched off (``OTEL_SDK_DISABLED=true``), no spans,
  no histograms;
- "off": the SDK records spans and histograms in the process, nothing leaves it
  (``OTEL_EXPORTER_OTLP_ENDPOINT=none``);
- "exporting": spans and metrics sent to a live metrics service (``python -m metrics``) at the
  default intervals, so every request opens a SERVER span, propagates it to storage and records
  ``http.server.duration``;
- "sampled": 10 % of traces kept (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``), metrics complete.
A/A runs (two identical gateways) differed by up to ~15 % on the shared 2-core machine. Rounds alternate
between them, in a rotating order, so drift on a shared machine hits all alike; the figure is the
median round.

    python -m bench.gateway_telemetry_bench            # 6 rounds of 5 s each
    python -m bench.gateway_telemetry_bench --quick    # 3 rounds of 2 s each
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path

import httpx
import uvloop
from studyassist.core.testing import ServiceProcess, spawn_service

from bench.gateway_bench import DEAD, load
from bench.report import record


def start_gateway(storage: ServiceProcess, data_dir: Path, otlp: str, **extra: str) -> ServiceProcess:
    return spawn_service(
        "gateway",
        {
            "GATEWAY_PORT": "0",
            "STORAGE_ADDR": storage.address,
            "CHAT_ADDR": DEAD,
            "METRICS_ADDR": DEAD,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
            "DATA_DIR": str(data_dir),
            "REDIS_URL": "",
            "RATE_LIMIT_PER_MINUTE": "0",
            "RATE_LIMIT_IP_PER_MINUTE": "0",
            **extra,
        },
    )


async def prepare(gateway: ServiceProcess) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=f"http://{gateway.address}", timeout=30) as http:
        account = {"email": f"b{uuid.uuid4().hex[:8]}@example.edu.vn", "password": "benchmark!", "display_name": "B"}
        reply = await http.post("/v1/auth/register", json=account)
        auth = {"Authorization": f"Bearer {reply.json()['access_token']}"}
        for i in range(20):
            await http.post("/v1/sessions", json={"title": f"Phiên học {i}"}, headers=auth)
        return auth


async def run(rounds: int, seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gw-tel-"))
    services: list[ServiceProcess] = []
    try:
        storage = spawn_service("bench.gateway_bench", {"BENCH_ROLE": "memory-storage"})
        services.append(storage)
        metrics = spawn_service("metrics", {"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0"})
        services.append(metrics)
        gateways = {
            # The OpenTelemetry SDK switched off (its standard OTEL_SDK_DISABLED): no-op tracer and
            # meter, no spans, no histograms. The baseline the cost is judged against.
            "disabled": start_gateway(storage, tmp / "disabled", "none", OTEL_SDK_DISABLED="true"),
            "off": start_gateway(storage, tmp / "off", "none"),
            "exporting": start_gateway(storage, tmp / "on", metrics.address),
            "sampled": start_gateway(
                storage,
                tmp / "sampled",
                metrics.address,
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG="0.1",
            ),
        }
        services.extend(gateways.values())
        auth = {mode: await prepare(gateway) for mode, gateway in gateways.items()}
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in gateways}
        modes = list(gateways.items())
        for number in range(rounds):
            # Rotate who goes first: on a shared machine the first phase of a round measured faster.
            for mode, gateway in modes[number % len(modes) :] + modes[: number % len(modes)]:
                results[mode].append(await load(gateway.port, "/v1/sessions?page_size=20", auth[mode], seconds, 0.5))
        summary = {
            mode: {key: statistics.median(r[key] for r in rs) for key in ("rps", "p50", "p95", "p99", "errors")}
            for mode, rs in results.items()
        }
        print(f"GET /v1/sessions through the gateway, 100 keep-alive clients, {rounds} rounds x {seconds:g} s (median)")
        for mode, s in summary.items():
            print(
                f"  telemetry {mode:<9} {s['rps']:8.0f} req/s   p50 {s['p50']:6.2f} ms   p95 {s['p95']:6.2f} ms"
                f"   p99 {s['p99']:6.2f} ms   errors {s['errors']:.0f}"
            )
        for mode in ("off", "exporting", "sampled"):
            cost = 1 - summary[mode]["rps"] / summary["disabled"]["rps"]
            print(f"  throughput cost of telemetry {mode} vs SDK disabled: {cost * 100:.1f} % (aim <= 10 %)")
        cost = 1 - summary["exporting"]["rps"] / summary["disabled"]["rps"]
        record(
            "telemetry_cost",
            cost * 100,
            f"{cost * 100:.1f} % ({summary['exporting']['rps']:.0f} req/s exporting every span and metric)",
            f"OpenTelemetry SDK disabled: {summary['disabled']['rps']:.0f} req/s",
        )
    finally:
        for service in reversed(services):
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    uvloop.run(run(3, 2.0) if args.quick else run(6, 5.0))


if __name__ == "__main__":
    main()
