"""The telemetry set-up's own pieces: the span encoder, the gateway's server spans, the exemplar filter."""

from __future__ import annotations

import pytest
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from studyassist.core.telemetry import ServerSpans, context_for, encode_spans, setup_telemetry

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _provider(**kwargs: object) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(resource=Resource.create({"service.name": "probe"}), **kwargs)  # type: ignore[arg-type]
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _sdk_server_span(provider: TracerProvider, carrier: dict[str, str] | None, fail: bool) -> ReadableSpan | None:
    tracer = provider.get_tracer("studyassist.probe")
    span = tracer.start_span(
        "GET",
        context=propagate.extract(carrier) if carrier else None,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": "GET", "url.path": "/v1/x"},
    )
    span.update_name("GET /v1/x")
    span.set_attributes({"http.route": "/v1/x", "http.response.status_code": 500 if fail else 200})
    if fail:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.record_exception(ValueError("boom"))
    span.end()
    return span  # type: ignore[return-value]


def _event(event: Event) -> tuple[str, dict[str, object]]:
    """An event without its stack trace (the two spans' exceptions are raised in different places)."""
    return event.name, {k: v for k, v in (event.attributes or {}).items() if k != "exception.stacktrace"}


def test_encoder_builds_what_the_sdk_encoder_builds() -> None:
    provider, exporter = _provider()
    tracer = provider.get_tracer("studyassist.probe", schema_url="https://opentelemetry.io/schemas/1.21.0")
    other = provider.get_tracer("other.scope")
    with tracer.start_as_current_span("root", kind=trace.SpanKind.SERVER, attributes={"s": "é", "i": 7}) as root:
        root.add_event("note", {"f": 1.5, "b": True, "list": [1, 2], "strs": ("a", "b")})
        with other.start_as_current_span("child", links=[trace.Link(root.get_span_context(), {"why": "x"})]) as c:
            c.set_status(trace.Status(trace.StatusCode.ERROR, "broken"))
            c.record_exception(RuntimeError("no"))
    remote = propagate.extract({"traceparent": PARENT, "tracestate": "k=v,a=b"})
    tracer.start_span("continued", context=remote, attributes={"n": None}).end()  # type: ignore[dict-item]
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    assert encode_spans(spans) == sdk_encode_spans(spans)
    assert encode_spans(spans).SerializeToString() == sdk_encode_spans(spans).SerializeToString()
    assert encode_spans([]) == sdk_encode_spans([])


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("carrier", [None, {"traceparent": PARENT}])
def test_server_spans_record_what_the_sdk_tracer_records(carrier: dict[str, str] | None, fail: bool) -> None:
    provider, exporter = _provider()
    expected = _sdk_server_span(provider, carrier, fail)
    spans = ServerSpans(provider, "studyassist.probe")
    span = spans.start("GET", propagate.extract(carrier) if carrier else None, {"http.request.method": "GET"})
    assert span is not None
    span.attributes["url.path"] = "/v1/x"
    span.name = "GET /v1/x"
    span.attributes.update({"http.route": "/v1/x", "http.response.status_code": 500 if fail else 200})
    if fail:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.record_exception(ValueError("boom"))
    span.end()
    sdk, ours = exporter.get_finished_spans()
    assert expected is not None and sdk.name == ours.name == "GET /v1/x"
    assert ours.kind == trace.SpanKind.SERVER and ours.resource is sdk.resource
    assert dict(ours.attributes or {}) == dict(sdk.attributes or {})
    assert ours.status.status_code == sdk.status.status_code
    assert [_event(e) for e in ours.events] == [_event(e) for e in sdk.events]
    assert ours.instrumentation_scope is not None and ours.instrumentation_scope.name == "studyassist.probe"
    assert ours.context is not None and sdk.context is not None
    assert ours.context.trace_flags == sdk.context.trace_flags and ours.end_time >= ours.start_time  # type: ignore[operator]
    if carrier:
        assert ours.parent is not None and sdk.parent is not None
        assert (ours.context.trace_id, ours.parent.span_id, ours.parent.is_remote) == (
            sdk.context.trace_id,
            sdk.parent.span_id,
            True,
        )
    else:
        assert ours.parent is None and ours.context.trace_id != sdk.context.trace_id
    # While the span is current, outgoing calls carry it on and log lines see its trace id.
    injected: dict[str, str] = {}
    propagate.inject(injected, context=context_for(span))
    flags = int(ours.context.trace_flags)
    assert injected["traceparent"] == f"00-{ours.context.trace_id:032x}-{ours.context.span_id:016x}-{flags:02x}"


def test_server_spans_follow_the_sampler_and_the_sdk_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    provider, exporter = _provider(sampler=ParentBased(ALWAYS_OFF))
    span = ServerSpans(provider, "probe").start("GET", None, {})
    assert span is not None and not span.context.trace_flags.sampled
    span.end()
    assert exporter.get_finished_spans() == ()
    # A sampled caller's trace is kept by ParentBased whatever its root sampler says.
    kept = ServerSpans(provider, "probe").start("GET", propagate.extract({"traceparent": PARENT}), {})
    assert kept is not None and kept.context.trace_flags.sampled
    kept.end()
    assert len(exporter.get_finished_spans()) == 1
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert ServerSpans(TracerProvider(), "probe").start("GET", None, {}) is None
    assert ServerSpans(trace.NoOpTracerProvider(), "probe").start("GET", None, {}) is None


def test_no_exemplars_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry = setup_telemetry("probe", None)
    assert isinstance(telemetry.meter_provider._sdk_config.exemplar_filter, AlwaysOffExemplarFilter)
    telemetry.shutdown()
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based")
    telemetry = setup_telemetry("probe", None)
    assert not isinstance(telemetry.meter_provider._sdk_config.exemplar_filter, AlwaysOffExemplarFilter)
    telemetry.shutdown()
