"""cairn-ingest seen by clients nobody here wrote: the OpenTelemetry Python
SDK's own OTLP exporters (gRPC with gzip, and HTTP/protobuf) send spans, and a
Junjo-style poller pages them back with ReadSpans through stubs built from the
server's reflection, from an empty key with a fixed batch size."""

import subprocess
import threading
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from conftest import BIN_DIR, platform


def send(exporter, service, names):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=64))
    tracer = provider.get_tracer("blackbox")
    for name in names:
        with tracer.start_as_current_span(name):
            pass
    assert provider.force_flush(30_000)
    provider.shutdown()


class JunjoPoller:
    """Pages ReadSpans as Junjo's backend does: a fixed batch size, resuming
    from the last key it saw, until a page brings nothing new."""

    def __init__(self, channel, metadata=()):
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        self.req = message_factory.GetMessageClass(pool.FindMessageTypeByName("ingestion.ReadSpansRequest"))
        resp = message_factory.GetMessageClass(pool.FindMessageTypeByName("ingestion.ReadSpansResponse"))
        self.call = channel.unary_stream(
            "/ingestion.InternalIngestionService/ReadSpans",
            request_serializer=self.req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        self.metadata = list(metadata)
        self.key = b""
        self.spans = []  # (key, service, name)

    def poll(self, batch_size):
        while True:
            page = list(self.call(self.req(start_key_ulid=self.key, batch_size=batch_size), metadata=self.metadata))
            got = 0
            for m in page:
                assert len(m.key_ulid) == 16
                if not m.span_bytes or not m.resource_bytes:
                    self.key = m.key_ulid  # junjo-ai-studio's key-only final message
                    continue
                span = trace_pb2.Span.FromString(m.span_bytes)
                resource = resource_pb2.Resource.FromString(m.resource_bytes)
                service = next(a.value.string_value for a in resource.attributes if a.key == "service.name")
                self.spans.append((m.key_ulid, service, span.name))
                self.key = m.key_ulid
                got += 1
            if got == 0:
                return


def test_sdk_exporters_over_grpc_gzip_and_http_and_a_junjo_poller_reads_each_span_once(start, tmp_path):
    _, ingest = platform(start, tmp_path, "--set", "auth.enabled=false")
    otlp, http = ingest.addresses["otlp"], ingest.addresses["otlp_http"]
    send(GrpcSpanExporter(endpoint=otlp, insecure=True, compression=Compression.Gzip), "grpc-svc",
         [f"grpc-{i}" for i in range(300)])
    send(HttpSpanExporter(endpoint=f"http://{http}/v1/traces"), "http-svc", [f"http-{i}" for i in range(200)])

    with ingest.channel() as ch:
        poller = JunjoPoller(ch)
        deadline = time.monotonic() + 10
        while len(poller.spans) < 500 and time.monotonic() < deadline:
            poller.poll(batch_size=23)
            time.sleep(0.1)
    keys = [k for k, _, _ in poller.spans]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "keys strictly increase"
    names = sorted(n for _, _, n in poller.spans)
    assert names == sorted([f"grpc-{i}" for i in range(300)] + [f"http-{i}" for i in range(200)])
    services = {(s, n.split("-")[0]) for _, s, n in poller.spans}
    assert services == {("grpc-svc", "grpc"), ("http-svc", "http")}, "each span with its own resource"


def test_an_auth_outage_is_retried_by_the_sdk_exporter_and_everything_arrives(start, tmp_path):
    url = f"store.url=sqlite://{tmp_path}/auth.db?mode=rwc"
    boot = subprocess.run([str(BIN_DIR / "cairn-auth"), "--set", url, "bootstrap-admin"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert boot.returncode == 0, boot.stderr
    admin = boot.stdout.strip()
    auth = start("cairn-auth", "--set", url)
    auth.wait_serving()

    def key(*scopes):
        args = [str(BIN_DIR / "cairn"), "keys", "--addr", auth.addr, "create", "--name", "bb"]
        for s in scopes:
            args += ["--scope", s]
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, env={"CAIRN_API_KEY": admin})
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    writer, reader = key("spans:write"), key("spans:read")
    _, ingest = platform(start, tmp_path, "--set", f"auth.address={auth.addr}")
    port = auth.addr.rsplit(":", 1)[1]
    auth.proc.kill()
    auth.proc.wait()

    # The exporter meets UNAVAILABLE (with a short RetryInfo) and retries; auth
    # comes back on the same address while it does.
    def restart():
        time.sleep(2)
        back = start("cairn-auth", "--set", url, listen=f"127.0.0.1:{port}")
        back.wait_serving()

    threading.Thread(target=restart, daemon=True).start()
    send(GrpcSpanExporter(endpoint=ingest.addresses["otlp"], insecure=True, headers={"x-junjo-api-key": writer},
                          timeout=20),
         "outage", [f"o-{i}" for i in range(50)])

    with ingest.channel() as ch:
        poller = JunjoPoller(ch, metadata=[("x-junjo-api-key", reader)])
        poller.poll(batch_size=100)
    assert sorted(n for _, _, n in poller.spans) == sorted(f"o-{i}" for i in range(50))
