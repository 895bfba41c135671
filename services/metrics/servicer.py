"""The RPCs: OTLP receivers (metrics and traces) and the dashboard service."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from studyassist.core.errors import InvalidArgument, NotFound
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from metrics.alerts import AlertEvaluator
from metrics.analysis import dashboard
from metrics.store import MetricStore
from metrics.traces import TRACE_ID_BYTES, TraceIndex

DEFAULT_WINDOW_S = 300


class OtlpMetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, store: MetricStore) -> None:
        self._store = store

    async def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.aio.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        result = self._store.ingest_metrics(request)
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        if result.rejected_points:
            # OTLP partial success: the exporter logs it and does not retry.
            response.partial_success.rejected_data_points = result.rejected_points
            response.partial_success.error_message = result.message
        return response


class OtlpTraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, store: MetricStore, traces: TraceIndex) -> None:
        self._store = store
        self._traces = traces

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._store.ingest_spans(request)
        self._traces.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(
        self, store: MetricStore, alerts: AlertEvaluator, traces: TraceIndex, high_pool_utilisation: float
    ) -> None:
        self._store = store
        self._alerts = alerts
        self._traces = traces
        self._high_pool_utilisation = high_pool_utilisation

    async def GetDashboard(
        self, request: metrics_pb2.GetDashboardRequest, context: grpc.aio.ServicerContext
    ) -> metrics_pb2.Dashboard:
        if request.window_seconds < 0:
            raise InvalidArgument("window_seconds must be positive (or 0 for the default of 300)")
        if request.window_seconds > self._store.window_s:
            raise InvalidArgument(
                f"window_seconds={request.window_seconds} is longer than the {self._store.window_s} s kept "
                "(METRICS_WINDOW_S)"
            )
        window = request.window_seconds or min(DEFAULT_WINDOW_S, self._store.window_s)
        return dashboard(self._store, window, self._high_pool_utilisation)

    async def ListAlerts(
        self, request: metrics_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> metrics_pb2.ListAlertsResponse:
        return metrics_pb2.ListAlertsResponse(alerts=[a.to_proto() for a in self._alerts.alerts.values()])

    async def GetTrace(
        self, request: metrics_pb2.GetTraceRequest, context: grpc.aio.ServicerContext
    ) -> metrics_pb2.Trace:
        text = request.trace_id.strip().lower()
        try:
            trace_id = bytes.fromhex(text)
        except ValueError:
            trace_id = b""
        if len(trace_id) != TRACE_ID_BYTES or not any(trace_id):
            raise InvalidArgument("trace_id must be 32 hex digits, not all zero")
        found = self._traces.get(trace_id)
        if found is None:
            raise NotFound(f"trace {text} not found (not received yet, or no longer kept)")
        return found
