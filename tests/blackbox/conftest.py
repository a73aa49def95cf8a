"""Shared fixtures: start real Cairn binaries on free loopback ports."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN_DIR = Path(os.environ.get("CAIRN_BIN_DIR", Path(__file__).resolve().parents[2] / "target" / "debug"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A running service binary; stopped with SIGTERM, killed if it lingers."""

    _started = 0

    def __init__(self, binary: str, tmp: Path, *args: str, env: dict | None = None, listen: str = "127.0.0.1:0"):
        # The binary binds 127.0.0.1:0 and reports what it got in an address
        # file, so no port is chosen here and raced for.
        Service._started += 1
        stem = f"{binary}-{os.getpid()}-{Service._started}"
        self.binary = binary
        self.log_path = tmp / f"{stem}.log"
        address_file = tmp / f"{stem}.addr"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, **(env or {}), "CAIRN_ADDRESS_FILE": str(address_file)}
        self.proc = subprocess.Popen(
            [str(BIN_DIR / binary), "--listen", listen, "--set", "metrics.listen=127.0.0.1:0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=tmp,
        )
        self.addresses = self._wait_addresses(address_file)
        self.addr = self.addresses.get("grpc", "127.0.0.1:1")
        self.port = int(self.addr.rsplit(":", 1)[1])

    def _wait_addresses(self, path: Path, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
            if self.proc.poll() is not None:
                return {}
            time.sleep(0.02)
        return {}

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.addr)

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.binary} exited with {self.proc.returncode}: {self.log()}")
            try:
                with self.channel() as ch:
                    stub = health_pb2_grpc.HealthStub(ch)
                    last = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                    if last == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as e:
                last = e.code()
            time.sleep(0.1)
        raise AssertionError(f"{self.binary} not SERVING after {timeout}s (last: {last}): {self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


@pytest.fixture
def start(tmp_path):
    started = []

    def _start(binary: str, *args: str, env: dict | None = None, listen: str = "127.0.0.1:0") -> Service:
        svc = Service(binary, tmp_path, *args, env=env, listen=listen)
        started.append(svc)
        return svc

    yield _start
    for svc in started:
        svc.stop()


def platform(start, tmp_path, *ingest_args):
    """An agent on a fresh SQLite database and local object store, and an
    ingest writing through it (OTLP listeners on free ports); waits for both."""
    agent = start(
        "cairn-agent",
        "--set", "auth.enabled=false",
        "--set", f"metadata.url=sqlite://{tmp_path}/meta.db?mode=rwc",
        "--set", f"object_store.url=file://{tmp_path}/objects",
        "--set", f"agent.data_dir={tmp_path}/agent",
    )
    agent.wait_serving()
    ingest = start(
        "cairn-ingest",
        "--set", f'ingest.agents=["{agent.addr}"]',
        "--set", f"object_store.url=file://{tmp_path}/objects",
        "--set", "otlp.listen=127.0.0.1:0",
        "--set", "otlp.http_listen=127.0.0.1:0",
        *ingest_args,
    )
    ingest.wait_serving()
    return agent, ingest
