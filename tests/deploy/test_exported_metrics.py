"""Every metric the manifests scale on is one the mesh really exports, under that exact name.

The names are read from the rendered manifests (every HPA metric that is not a CPU or memory
resource) and from the prometheus-adapter rule in docs/kubernetes.md. The producer is the
embedding service's own Batcher, its gauge exported by the service's own telemetry set-up over
OTLP to a real metrics service, whose Prometheus /metrics is scraped and parsed. The same gauge
reaches Prometheus through the otel-collector component too: its Prometheus exporter names it by
the OpenTelemetry compatibility rules, reproduced in ``collector_prometheus_name``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import yaml
from embedding.batcher import Batcher
from metrics.server import MetricsApp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from studyassist.core.telemetry import setup_telemetry

from deploy.render import Obj
from tests.deploy.conftest import OVERLAYS, REPO
from tests.metrics.helpers import flush, metrics_service

DOC = REPO / "docs" / "kubernetes.md"
# Labels Prometheus itself adds to every scraped series (from the pod's target), never the exporter.
TARGET_LABELS = {"namespace", "pod", "job", "instance"}
# OTel unit abbreviations the Collector's Prometheus exporter spells out (the ones this mesh uses).
UNIT_WORDS = {"ms": "milliseconds", "s": "seconds", "us": "microseconds", "By": "bytes", "%": "percent"}
PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def hpa_metric_names(objects: list[Obj]) -> set[str]:
    """Names of the External, Pods and Object metrics every HPA scales on."""
    names = set()
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] in ("External", "Pods", "Object"):
                names.add(metric[metric["type"].lower()]["metric"]["name"])
    return names


def adapter_rules() -> list[Obj]:
    """The prometheus-adapter rules that docs/kubernetes.md tells SREs to add (YAML blocks with ``rules:``)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    rules: list[Obj] = []
    for block in blocks:
        loaded = yaml.safe_load(block)
        if isinstance(loaded, dict) and "rules" in loaded:
            for kind in ("external", "custom"):
                rules += loaded["rules"].get(kind, [])
    return rules


def collector_prometheus_name(name: str, unit: str, kind: str) -> str:
    """The name the Collector's Prometheus exporter gives an OTLP metric (OpenTelemetry's
    Prometheus compatibility spec: invalid characters become one ``_``; the unit loses its
    ``{annotation}``, ``1`` becomes ``ratio``, ``a/b`` becomes ``a_per_b``, abbreviations are
    spelled out, and it is appended unless the name holds it; monotonic sums end in ``_total``)."""
    base = re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_:]", "_", name))
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if unit == "1":
        unit = "ratio" if kind == "gauge" else ""
    main, _, per = unit.partition("/")
    words = "_".join(w for w in (UNIT_WORDS.get(main, main), f"per_{PER_UNIT_WORDS.get(per, per)}" if per else "") if w)
    if words and not base.endswith(words) and f"_{words}_" not in f"_{base}_":
        base = f"{base}_{words}"
    if kind == "counter" and not base.endswith("_total"):
        base += "_total"
    return base


class GatedModel:
    """A stand-in for the model: the first batch waits until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: list[list[int]]) -> npt.NDArray[np.float32]:
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the model")
        return np.zeros((len(batch), 4), dtype=np.float32)


@asynccontextmanager
async def embedding_with_queue(app: MetricsApp, waiting: int) -> AsyncIterator[Batcher]:
    """The embedding service's Batcher, instrumented by the service's own telemetry set-up, with the
    model busy and ``waiting`` texts queued behind it; its telemetry flushed to ``app``."""
    telemetry = setup_telemetry("embedding", f"127.0.0.1:{app.port}", export_interval_s=3600)
    model = GatedModel()
    batcher = Batcher(model, max_batch_tokens=4096, max_wait_s=0.0, max_queue=1024, meter=telemetry.meter)
    batcher.start()
    calls = [asyncio.create_task(batcher.embed([[101, 102]]))]
    try:
        assert await asyncio.to_thread(model.entered.wait, 10), "the first batch never reached the model"
        calls += [asyncio.create_task(batcher.embed([[101, 7, 102]])) for _ in range(waiting)]
        for _ in range(100):
            if batcher.queue_depth == waiting:
                break
            await asyncio.sleep(0.01)
        assert batcher.queue_depth == waiting
        await flush(telemetry)
        yield batcher
    finally:
        model.release.set()
        await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        await batcher.stop()
        telemetry.shutdown()


async def scrape(app: MetricsApp) -> dict[str, list[Sample]]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{app.http_port}/metrics", timeout=10)).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def referenced_names(rendered: dict[str, list[Obj]]) -> set[str]:
    names = set().union(*(hpa_metric_names(rendered[overlay]) for overlay in OVERLAYS))
    assert names, "no HPA scales on an exported metric: embedding should scale on its queue depth"
    return names


async def test_hpa_metrics_are_exported_under_their_names(rendered: dict[str, list[Obj]]) -> None:
    names = referenced_names(rendered)
    now = [1_000_000.0]
    async with metrics_service({"METRICS_WINDOW_S": "900"}, clock=lambda: now[0]) as app:
        async with embedding_with_queue(app, waiting=5):
            families = await scrape(app)
            for name in sorted(names):
                assert name in families, f"an HPA scales on {name}, but /metrics has no such metric"
                samples = [s for s in families[name] if s.labels.get("service") == "embedding"]
                assert [s.value for s in samples] == [5.0], families[name]
                assert samples[0].labels["instance_id"], "one series per embedding pod"
            # The same data through the otel-collector component: its Prometheus exporter's name.
            exported = {s.name: s for s in app.store.all_series() if s.service == "embedding"}
            by_collector = {collector_prometheus_name(s.name, s.unit, s.kind) for s in exported.values()}
            assert names <= by_collector, (names, sorted(by_collector))

        # A pod that stops reporting (crashed) drops out of the scrape before the window ends, so
        # its last queue depth does not hold the HPA up.
        now[0] += 130
        assert not set(await scrape(app)) & names


def test_adapter_rule_in_the_docs_serves_the_hpa_metrics(rendered: dict[str, list[Obj]]) -> None:
    names = referenced_names(rendered)
    rules = adapter_rules()
    served = {rule["name"]["as"] for rule in rules}
    assert names <= served, f"docs/kubernetes.md's adapter rules serve {sorted(served)}, the HPAs use {sorted(names)}"
    for rule in rules:
        if rule["name"]["as"] not in names:
            continue
        series = re.fullmatch(r"(\w+)\{(.*)\}", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        assert series[1] == rule["name"]["as"], "the rule renames the metric; keep one name throughout"
        # Its label matchers pick the metrics service's copy, whose labels the exposition test sees.
        labels = {m[0] for m in re.findall(r'(\w+)(!=|=~|=|!~)"', series[2] + rule["metricsQuery"])}
        assert labels - TARGET_LABELS <= {"instance_id", "service"}, labels


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("embedding.queue.depth", "{text}", "gauge", "embedding_queue_depth"),
        ("embedding.texts", "{text}", "counter", "embedding_texts_total"),
        ("process.memory.rss", "By", "gauge", "process_memory_rss_bytes"),
        ("rpc.server.duration", "ms", "histogram", "rpc_server_duration_milliseconds"),
        ("embedding.texts_per_second", "{text}/s", "gauge", "embedding_texts_per_second"),
        ("llm.tokens_per_second", "{token}/s", "histogram", "llm_tokens_per_second"),
        ("net.io", "By/s", "counter", "net_io_bytes_per_second_total"),
        ("db.pool.utilisation", "1", "gauge", "db_pool_utilisation_ratio"),
    ],
)
def test_collector_naming_follows_the_compatibility_spec(name: str, unit: str, kind: str, expected: str) -> None:
    assert collector_prometheus_name(name, unit, kind) == expected


def test_collector_config_names_no_metrics() -> None:
    """The collector's pipeline filters or renames nothing: if a processor ever picks metrics by
    name, those names must be added to the checks above."""
    manifest = Path(REPO / "deploy" / "k8s" / "components" / "otel-collector" / "otel-collector.yaml")
    config_map = next(o for o in yaml.safe_load_all(manifest.read_text()) if o["kind"] == "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert set(config["processors"]) <= {"memory_limiter", "batch"}, sorted(config["processors"])
