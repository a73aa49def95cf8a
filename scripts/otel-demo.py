"""Sends a few spans to an OTLP/gRPC endpoint with the OpenTelemetry Python
SDK's own exporter (gzip), as any instrumented application would; used by
`scripts/dev up` to show ingest at work.

usage: otel-demo.py ENDPOINT API_KEY SERVICE COUNT
"""

import sys
import time

from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def main():
    endpoint, key, service, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    exporter = OTLPSpanExporter(
        endpoint=endpoint, insecure=True, compression=Compression.Gzip, headers=(("x-api-key", key),)
    )
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("cairn-dev")
    for n in range(count):
        with tracer.start_as_current_span("checkout") as root:
            root.set_attribute("order", n)
            with tracer.start_as_current_span("charge card"):
                time.sleep(0.002)
    if not provider.force_flush(30_000):
        sys.exit("the exporter did not flush within 30 s")
    provider.shutdown()
    print(f"sent {2 * count} spans of service {service} to {endpoint} with the OpenTelemetry SDK's OTLP/gRPC exporter")


if __name__ == "__main__":
    main()
