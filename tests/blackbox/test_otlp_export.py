"""A service configured with an OTLP endpoint exports its request spans there,
and continues a caller's W3C trace. The receiver uses the official OTLP types."""

import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import free_port


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []  # (service.name, span)
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for rs in request.resource_spans:
                service = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
                )
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append((service, span))
        return trace_service_pb2.ExportTraceServiceResponse()


def test_request_spans_reach_the_configured_otlp_endpoint(start):
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        svc = start("cairn-orchestrator", "--set", f"telemetry.otlp_endpoint=http://127.0.0.1:{port}")
        svc.wait_serving()
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        with svc.channel() as ch:
            # A request that is not infrastructure-exempt from spans: health is traced too.
            health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=5,
                metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")],
            )
        assert svc.stop() == 0  # shutdown flushes pending spans
        services = {s for s, _ in receiver.spans}
        assert "cairn-orchestrator" in services, receiver.spans
        continued = [sp for _, sp in receiver.spans if sp.trace_id.hex() == trace_id]
        assert continued, "the caller's trace id was continued"
        assert continued[0].parent_span_id.hex() == "00f067aa0ba902b7"
        assert continued[0].name == "/grpc.health.v1.Health/Check"
    finally:
        server.stop(0)
