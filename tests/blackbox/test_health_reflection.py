"""Every service binary serves grpc.health.v1 and reflection, checked with the
reference Python clients (grpcio-health-checking, grpcio-reflection)."""

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import platform

STANDARD = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}

# binary -> the services of its own it must list (beyond health and reflection).
SERVICES = {
    "cairn-auth": {
        "cairn.auth.v1.AuthService",
        "cairn.auth.v1.KeyAdminService",
        "ingestion.InternalAuthService",
    },
    "cairn-agent": {"cairn.agent.v1.AgentService", "cairn.agent.v1.TopicService"},
    "cairn-ingest": {"cairn.ingest.v1.ReadService", "ingestion.InternalIngestionService"},
    "cairn-orchestrator": {
        "tasker.v1.TaskService",
        "tasker.v1.StepService",
        "tasker.v1.TemplateService",
        "tasker.v1.AnalyticsService",
        "tasker.v1.DlqService",
        "tasker.v1.HealthService",
        "tasker.v1.ConfigService",
        "cairn.orchestrator.v1.WorkerService",
    },
    "cairn-druid-proxy": set(),
}


def start_service(start, tmp_path, binary):
    """The service, with what it needs to be ready: the ingest writes
    through an agent."""
    if binary != "cairn-ingest":
        return start(binary)
    _, ingest = platform(start, tmp_path, "--set", "auth.enabled=false")
    return ingest


@pytest.mark.parametrize("binary", sorted(SERVICES))
def test_health_serving_and_reflection_lists_services(start, tmp_path, binary):
    svc = start_service(start, tmp_path, binary)
    svc.wait_serving()
    with svc.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

        db = ProtoReflectionDescriptorDatabase(ch)
        listed = set(db.get_services())
        assert listed == STANDARD | SERVICES[binary]
        # The descriptors behind the names resolve too.
        for name in listed:
            assert db.FindFileContainingSymbol(name) is not None


@pytest.mark.parametrize("binary", sorted(SERVICES))
def test_sigterm_exits_cleanly(start, tmp_path, binary):
    svc = start_service(start, tmp_path, binary)
    svc.wait_serving()
    assert svc.stop(timeout=30) == 0, svc.log()
    assert "stopped" in svc.log()


def test_print_config_shows_effective_values(tmp_path):
    import subprocess
    from conftest import BIN_DIR

    out = subprocess.run(
        [str(BIN_DIR / "cairn-ingest"), "--print-config", "--set", "grpc.request_timeout=1234ms"],
        capture_output=True,
        text=True,
        env={"CAIRN_TELEMETRY__LOG": "debug", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert "request_timeout = \"1234ms\"" in out
    assert 'log = "debug"' in out
    assert 'listen = "127.0.0.1:50053"' in out


def test_invalid_config_is_refused_before_serving(tmp_path):
    import subprocess
    from conftest import BIN_DIR

    proc = subprocess.run(
        [str(BIN_DIR / "cairn-agent"), "--set", "grpc.max_concurrent_requests=0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "grpc.max_concurrent_requests" in proc.stderr


def test_a_service_whose_dependency_is_away_is_alive_but_not_ready(start, tmp_path):
    """The ingest with no agent to write through: NOT_SERVING for readiness
    probes, SERVING under `liveness` (a restart would not bring the agent
    back), as the Kubernetes manifests' probes ask."""
    import time

    svc = start(
        "cairn-ingest",
        "--set", "auth.enabled=false",
        "--set", 'ingest.agents=["127.0.0.1:9"]',
        "--set", f"object_store.url=file://{tmp_path}/objects",
        "--set", "otlp.listen=127.0.0.1:0",
        "--set", "otlp.http_listen=127.0.0.1:0",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with svc.channel() as ch:
                health = health_pb2_grpc.HealthStub(ch)
                alive = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2).status
                ready = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                break
        except Exception:
            assert time.monotonic() < deadline, svc.log()
            time.sleep(0.1)
    assert alive == health_pb2.HealthCheckResponse.SERVING
    assert ready == health_pb2.HealthCheckResponse.NOT_SERVING
