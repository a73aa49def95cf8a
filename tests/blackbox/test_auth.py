"""cairn-auth seen by clients nobody here wrote: the Junjo ValidateApiKey
contract (WIRE.md §1) through stubs built from the server's own reflection,
and a scan of everything a run left on disk for the secrets it issued."""

import subprocess
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import BIN_DIR


def run_cli(*args, key, addr):
    out = subprocess.run(
        [str(BIN_DIR / "cairn"), "keys", "--addr", addr, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"CAIRN_API_KEY": key, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), out.stderr


def validate_stub(channel):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    req = message_factory.GetMessageClass(pool.FindMessageTypeByName("ingestion.ValidateApiKeyRequest"))
    resp = message_factory.GetMessageClass(pool.FindMessageTypeByName("ingestion.ValidateApiKeyResponse"))
    call = channel.unary_unary(
        "/ingestion.InternalAuthService/ValidateApiKey",
        request_serializer=req.SerializeToString,
        response_deserializer=resp.FromString,
    )
    return lambda key: call(req(api_key=key), timeout=5).is_valid


def test_validate_api_key_and_no_secret_left_behind(start, tmp_path):
    url = f"store.url=sqlite://{tmp_path}/auth.db?mode=rwc"
    env = {"CAIRN_TELEMETRY__LOG": "debug"}
    boot = subprocess.run(
        [str(BIN_DIR / "cairn-auth"), "--set", url, "bootstrap-admin"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert boot.returncode == 0, boot.stderr
    admin = boot.stdout.strip()
    again = subprocess.run(
        [str(BIN_DIR / "cairn-auth"), "--set", url, "bootstrap-admin"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert again.returncode != 0 and again.stdout == "", "a second bootstrap prints no key"

    auth = start("cairn-auth", "--set", url, "--set", "keys.last_used_flush=200ms", env=env)
    auth.wait_serving()
    cli_stderr = []

    def create(*extra):
        key, err = run_cli("create", "--name", "bb", "--scope", "spans:write", *extra, key=admin, addr=auth.addr)
        cli_stderr.append(err)
        return key

    valid = create()
    revoked = create()
    expiring = create("--expires", "1s")
    revoked_id = revoked.split("_")[1]
    _, err = run_cli("revoke", revoked_id, key=admin, addr=auth.addr)
    cli_stderr.append(err)
    time.sleep(1.5)

    with auth.channel() as ch:
        is_valid = validate_stub(ch)
        assert is_valid(valid) is True
        assert is_valid(revoked) is False
        assert is_valid(expiring) is False
        tampered = valid[:-1] + ("A" if valid[-1] != "A" else "B")
        assert is_valid(tampered) is False
        assert is_valid("cairn_AAAAAAAAAAAA_" + "A" * 36) is False
        assert is_valid("") is False

    listing, _ = run_cli("list", "--all", key=admin, addr=auth.addr)
    time.sleep(0.5)  # let last_used_at flush
    assert auth.stop() == 0

    issued = [admin, valid, revoked, expiring]
    blobs = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    blobs["cli stderr"] = "".join(cli_stderr).encode()
    blobs["cli list"] = listing.encode()
    assert any(name.startswith("auth.db") for name in blobs), blobs.keys()
    for key in issued:
        secret = key[19:49]
        assert len(secret) == 30
        for name, blob in blobs.items():
            assert key.encode() not in blob, f"a full key is in {name}"
            assert secret.encode() not in blob, f"a secret is in {name}"
    # Key ids are fine to show, and are shown.
    assert revoked_id in listing
