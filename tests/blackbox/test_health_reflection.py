"""Every service binary serves grpc.health.v1 and reflection, checked with the
reference Python clients (grpcio-health-checking, grpcio-reflection)."""

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

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
    "cairn-ingest": set(),
    "cairn-orchestrator": set(),
    "cairn-druid-proxy": set(),
}


@pytest.mark.parametrize("binary", sorted(SERVICES))
def test_health_serving_and_reflection_lists_services(start, binary):
    svc = start(binary)
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
def test_sigterm_exits_cleanly(start, binary):
    svc = start(binary)
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
